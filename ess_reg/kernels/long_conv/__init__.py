"""Causal long convolution: by FFT (:mod:`.fft`), and its Toeplitz matrix and direct sum (:mod:`.naive`)."""

from .fft import causal_fft_conv
from .naive import causal_conv_reference, toeplitz

__all__ = ["causal_fft_conv", "causal_conv_reference", "toeplitz"]
