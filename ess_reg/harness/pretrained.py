"""``ess-analyze FOLDER``: a model saved with ``save_pretrained``, measured on a token batch.

The folder is loaded offline (``local_files_only``: nothing is downloaded), with eager attention
(the probe reads attention probabilities, which fused kernels do not expose), in float32. The
tokens come from a file of ids (one sequence per line, ids separated by spaces or commas; lines
of other lengths are refused) or are drawn at random from the model's vocabulary at a stated
length, seeded. Written to ``--out``: ``table.txt`` (per layer: operators, TSS, ESS, spread
over heads, drop across the separators), ``ess_vs_index.png`` and, with ``--separator``,
``boundary_profile.json`` (ESS around the separator, per layer). With ``--tracking-uri`` the
same are logged as an MLflow run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis import Analysis, analyze
from ..indices import EvenIndices
from ..layer_report import FailureThresholds

__all__ = ["is_pretrained_folder", "load_pretrained", "read_ids", "PretrainedAnalysis", "analyze_pretrained"]

log = logging.getLogger("ess_reg")


def is_pretrained_folder(target: str) -> bool:
    """A folder written by ``save_pretrained``: it holds a ``config.json``."""
    return Path(target).is_dir() and (Path(target) / "config.json").is_file()


def load_pretrained(folder: str):
    """The model of ``folder``, offline, with eager attention, in float32, in eval mode."""
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    except ImportError as err:
        raise ValueError("a save_pretrained folder needs transformers: pip install 'ess-reg[hf]'") from err
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    options = dict(local_files_only=True, attn_implementation="eager")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    except ValueError:  # not a causal LM (an encoder, a base model): the bare model
        model = AutoModel.from_pretrained(folder, **options)
    model = model.float()  # the spectra are taken in float32 or float64 anyway
    log.info("ess-analyze: %s (%s) loaded with eager attention, float32: the probe reads attention probabilities",
             folder, config.model_type)
    return model.eval()


def read_ids(path: str, vocab_size: int | None) -> torch.Tensor:
    """``(B, L)`` token ids from a text file: one sequence per line, ids separated by spaces or
    commas; every line of the same length; ids within the vocabulary."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append([int(v) for v in line.replace(",", " ").split()])
        except ValueError:
            raise ValueError(f"--ids {path}: line {number} is not a list of integer ids") from None
    if not rows:
        raise ValueError(f"--ids {path}: no sequence in the file")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"--ids {path}: the sequences have lengths {lengths}; give sequences of one length")
    ids = torch.tensor(rows, dtype=torch.long)
    if vocab_size is not None and (bool((ids < 0).any()) or bool((ids >= vocab_size).any())):
        raise ValueError(f"--ids {path}: ids must lie in 0..{vocab_size - 1} (the model's vocabulary); "
                         f"got {int(ids.min())}..{int(ids.max())}")
    return ids


@dataclass
class PretrainedAnalysis:
    folder: str
    model_type: str
    tokens: torch.Tensor
    analysis: Analysis
    profiles: dict[str, list[float]]  # layer -> ESS at offsets -window..window around the separator


def analyze_pretrained(folder: str, *, ids: str | None = None, length: int = 128, examples: int = 2,
                       separator: int | None = None, window: int = 4, seed: int = 0,
                       num_indices: int | None = None, certified: float | None = None,
                       heads: int | None = None) -> PretrainedAnalysis:
    model = load_pretrained(folder)
    vocab = getattr(model.config, "vocab_size", None)
    if ids is not None:
        tokens = read_ids(ids, vocab)
    else:
        if vocab is None:
            raise ValueError("the model's config gives no vocab_size: pass --ids")
        if length < 2 or examples < 1:
            raise ValueError(f"--length must be >= 2 and --examples >= 1, got {length} and {examples}")
        tokens = torch.randint(vocab, (examples, length), generator=torch.Generator().manual_seed(seed))
    if separator is not None and vocab is not None and not 0 <= separator < vocab:
        raise ValueError(f"--separator {separator} is not an id of the model's vocabulary (0..{vocab - 1})")
    separators = [separator] if separator is not None else None
    if num_indices is not None and num_indices < 1:
        raise ValueError(f"--num-indices must be >= 1, got {num_indices}")
    if heads is not None and heads < 1:
        raise ValueError(f"--heads must be >= 1, got {heads}")
    with torch.no_grad():
        analysis = analyze(model, tokens, separators=separators, window=window,
                           indices=EvenIndices(num_indices) if num_indices else "all", progress=True,
                           certified=certified, channel_limit=heads)
    profiles = {name: profile.tolist() for name, profile in analysis.profiles.items()}
    if separators is not None and not profiles:
        log.warning("ess-analyze: no token %d in the inputs: no boundary profile", separator)
    return PretrainedAnalysis(folder, model.config.model_type, tokens, analysis, profiles)


def write_outputs(result: PretrainedAnalysis, out: Path) -> list[Path]:
    """``table.txt``, ``ess_vs_index.png`` and (with a separator) ``boundary_profile.json``."""
    from .findings import ess_figure

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "table.txt", out / "ess_vs_index.png"]
    written[0].write_text(result.analysis.table() + "\n")
    figure = ess_figure(result.analysis.reports, FailureThresholds(), title=f"{result.model_type}: {result.folder}")
    figure.savefig(written[1], dpi=100)
    if result.profiles:
        path = out / "boundary_profile.json"
        path.write_text(json.dumps({"offsets": "-window..window; 0 is the index just after the separator",
                                    "profiles": result.profiles}, indent=1))
        written.append(path)
    return written
