"""A run's ESS findings for people: the terminal table, ``ess_table.json`` and the figures.

Every output takes the thresholds in force, so the table, the JSON, the plots and the tags
can never disagree with each other or with the config.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..layer_report import FailureThresholds, LayerReport, model_summary
from ..verdict import Verdict
from ..layer_report import layer_keys

__all__ = ["format_report", "ess_table", "ess_figure"]


def format_report(reports: Mapping[str, LayerReport], verdict: Verdict, thresholds: FailureThresholds) -> str:
    keys = layer_keys(reports)
    header = (f"{'layer':<22} {'ESS':>6} {'reach':>6} {'ESS/reach':>9} {'ESS/kv':>7} {'TSS/kv':>7} "
              f"{'total ESS':>10}  state")
    lines = [header, "-" * len(header)]
    for name, r in reports.items():
        per_kv = f"{r.ess_per_item:7.2f}" if r.ess_per_item is not None else f"{'-':>7}"
        tss_kv = f"{r.tss_per_item:7.2f}" if r.tss_per_item is not None else f"{'-':>7}"
        label = f"{keys[name]} {name}"
        lines.append(f"{label:<22} {r.ess_avg:6.2f} {r.reach.mean().item():6.2f} {r.utilization:9.3f} {per_kv} "
                     f"{tss_kv} {r.ess_total:10.1f}  {r.state_use(thresholds)}")
    summary = model_summary(reports)
    lines.append(f"{'model (mean of layers)':<22} {summary['ess']:6.2f} {'':>6} {summary['util']:9.3f} "
                 + (f"{summary['per_kv']:7.2f}" if "per_kv" in summary else f"{'-':>7}"))
    lines.append("")
    lines.append(f"verdict: {verdict.mode} — {verdict.reason}")
    lines.append(f"(thresholds: solved >= {thresholds.solved:g}, layer state full at ESS/reach >= "
                 f"{thresholds.saturation:g}, unused at <= {thresholds.collapse:g}, "
                 f"'near' within {thresholds.margin:g} of either; "
                 f"still training while the loss falls > {thresholds.still_falling:.0%} over the second half; "
                 "ESS per head or channel, reach = min(i, L - i, TSS))")
    return "\n".join(lines)


def ess_table(reports: Mapping[str, LayerReport], verdict: Verdict, thresholds: FailureThresholds) -> dict:
    """Everything behind the verdict, per layer and index, as plain data."""
    keys = layer_keys(reports)
    layers = {}
    for name, r in reports.items():
        layers[name] = {"key": keys[name], **r.metrics(), "state": r.state_use(thresholds),
                        "indices": r.ess.indices.tolist(), "ess_per_index": r.ess_per_index.tolist(),
                        "tss_per_index": r.tss.tolist(), "reach_per_index": r.reach.tolist()}
    return {"verdict": verdict.as_dict(), "model": model_summary(reports),
            "thresholds": {"solved": thresholds.solved, "saturation": thresholds.saturation,
                           "collapse": thresholds.collapse, "margin": thresholds.margin,
                           "still_falling": thresholds.still_falling},
            "layers": layers}


def ess_figure(reports: Mapping[str, LayerReport], thresholds: FailureThresholds, title: str = ""):
    """ESS against the sequence index, one panel per layer, with TSS, the reachable state and
    the saturation / collapse thresholds drawn as fractions of the reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = layer_keys(reports)
    n = len(reports)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False, sharey=True)
    for ax, (name, r) in zip(axes[0], reports.items()):
        idx = r.ess.indices.tolist()
        reach = r.reach
        ax.plot(idx, r.ess_per_index.tolist(), marker="o", markersize=3, label="ESS (per head/channel)")
        ax.plot(idx, reach.tolist(), color="black", linewidth=1, label="reach min(i, L-i, TSS)")
        ax.plot(idx, r.tss.tolist(), color="grey", linestyle=":", linewidth=1, label="TSS")
        ax.plot(idx, (thresholds.saturation * reach).tolist(), color="tab:red", linestyle="--", linewidth=0.8,
                label=f"saturation {thresholds.saturation:g} x reach")
        ax.plot(idx, (thresholds.collapse * reach).tolist(), color="tab:purple", linestyle="--", linewidth=0.8,
                label=f"collapse {thresholds.collapse:g} x reach")
        if r.context_end is not None:
            ax.axvline(r.context_end, color="grey", linewidth=0.6)
        ax.set_title(f"{keys[name]} {name}: ESS/reach {r.utilization:.2f}", fontsize=9)
        ax.set_xlabel("sequence index i")
        top = max(max(reach.tolist()), max(r.ess_per_index.tolist()))
        ax.set_ylim(0, top * 1.1 + 0.5)
    axes[0][0].set_ylabel("state size")
    axes[0][0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
