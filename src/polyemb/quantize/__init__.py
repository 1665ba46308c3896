"""``precision="int8"``: the transformer's matrix products as u8 x s8 on x86 CPUs with AVX2 (best: VNNI).

What is quantized, and how, was chosen by measurement on all-MiniLM-L6-v2 (AMD EPYC Zen 5 and
Zen 4, the 7-bit weights on a Zen 3; docs/performance.md has the commands and figures):

- The ``nn.Linear`` layers inside the transformer's layers: weights as int8 with one scale per
  output channel (one scale per tensor: mean row cosine to fp32 0.952 on 300 English sentences;
  per channel 0.978).
- Activations as u8 with a zero point over the full 8-bit range (0.994; 7 bits: 0.978), one
  scale per tensor; the three products of an attention block (Q, K, V) read one tensor and
  quantize it once (:class:`SharedInput`). Where a layer reads a LayerNorm's output (Q, K, V,
  the feed-forward block) the range is fixed at load, at what the calibration sentences reach
  (:func:`fix_input_ranges`: no range pass per call, 1.045x on STS English on an Intel Xeon,
  the same mean row cosine to fp32); the attention output's input, whose scale moves with the
  text, takes its own range per call.
- Smoothed first (:func:`smooth_inputs`): the inputs quantized from float (Q, K and V, the
  attention output, the feed-forward block) are LayerNorm outputs and attention contexts where
  a few channels reach far beyond the rest; each channel is divided by a factor fixed at load
  time and put into the weights that read it. On an Intel Xeon with AMX the gate had failed
  (Spearman drops of 0.0057 on zh and 0.0056 on ru; mean row cosine 0.99523) and passes with it
  (largest drop 0.0013, ja; 0.99869).
- Weights over 8 bits (-127 to 127) where the CPU has AVX-512 VNNI, AVX-VNNI or AMX, whose
  products sum u8 x s8 into 32 bits; over 7 bits (-63 to 63) on CPUs with AVX2 but none of
  them (AMD Zen 2 and 3, Intel Haswell to Skylake), whose kernels sum each pair of products in
  16 bits first: 2 x 255 x 63 = 32,130 fits there, where 8-bit weights saturate (an
  all-positive product, 2,048 x 384 x 384, was off by 7% of its scale with 8 bits on an AMD
  EPYC Zen 3, 0.2% with 7; :func:`weight_steps`). int8 is refused on CPUs without AVX2. The
  flags read are those oneDNN may use: a cap in ``ONEDNN_MAX_CPU_ISA`` counts
  (:func:`polyemb._platform.cpu_flags`).
- Kept int8 between layers: each feed-forward block writes its output as u8 over a range fixed
  at load time (:func:`calibrate`, on 88 sentences written for it in 11 languages,
  :mod:`polyemb.quantize.sentences`), which its down-projection reads as it is: no float32 output of
  4 bytes a value, no range pass, no rounding pass (1.08x end to end, 1,500 English sentences,
  AMD EPYC Zen 4; same mean row cosine to fp32).
- Outlier channels in float (:class:`FloatChannels`): in all-MiniLM-L6-v2's first four layers,
  one or two of a feed-forward block's 1,536 outputs reach 13.8 to 24.7 on the calibration
  sentences, where every other output stays below 5.9 (on 440 sentences in 11 languages, about
  3% of the tokens took them above half their largest value). One range for all outputs
  spends most of u8's steps on those few values: that is why the first two layers'
  down-projections had to stay float (with them in int8 the gate failed: Spearman drops of
  0.0057 on ja and 0.0056 on zh on a Zen 5; mean row cosine 0.98942 on a Zen 3). Now the
  channels whose calibration maximum exceeds :data:`OUTLIER_FACTOR` times the 99th percentile
  of the channels' maxima are computed beside the int8 products (a few dot products per token,
  the GELU in float32), the down-projection's int8 weights leave them out, and the u8 range
  covers the other channels only; every down-projection is int8. On an AMD EPYC Zen 3 (7-bit weights) the
  gate passed, its largest Spearman drop 0.0049 (ru) and mean row cosine 0.99399 (with the two
  float down-projections: 0.0022, zh, and 0.99290), at 1.08x their speed on STS English and
  1.07x on 11 languages.
- Never quantized: the embedding tables (a lookup costs nothing), LayerNorm, attention's own
  products, softmax and pooling.

The products run through oneDNN's u8s8 kernel (``onednn::qlinear_pointwise``, in every x86 torch
wheel), the feed-forward GELU fused into its product as in :mod:`polyemb.kernels`. Everything
that is not an int8 product runs in :func:`activation_dtype`: bfloat16 on CPUs with bfloat16
units (with the bf16 path's attention where that pays off), float32 elsewhere. An activation is
quantized from float32 (one pass to round it over its fixed range, or two with a range per call,
:func:`quantize_rows`) and read by the kernel in place. The residuals of the attention and
feed-forward outputs are added as the products' last step (:class:`polyemb.kernels.DenseAddNorm`).
The weights are quantized from the loaded ones (bfloat16 where the activations are: its
rounding moves a weight by at most half an int8 step, and the row cosines to fp32 measured the
same as from float32 weights and activations: mean 0.99509 against 0.99508 on 1,500 English
sentences).

A text's int8 vector moves slightly with the texts batched with it: the attention output's
range is per call, and the batch's shape changes the float rounding around the products (attention's
kernel, the padding), and int8's rounding carries it on (all-MiniLM-L6-v2, 60 English
sentences alone against in one call with 240 others: row cosine at least 0.9988). int8
vectors are approximate, as bf16 ones. The fixed ranges depend only on the model (with its
``max_seq_length``) and this CPU's arithmetic.
"""

from polyemb.quantize.activations import FloatChannels, Quantized, SharedInput, quantize_rows
from polyemb.quantize.calibration import (
    LINKED_MIN_COSINE,
    OUTLIER_FACTOR,
    SMOOTHING,
    calibrate,
    fix_input_ranges,
    outlier_channels,
    smooth_inputs,
)
from polyemb.quantize.linear import Int8Linear, activation_dtype, check_int8_supported, link, weight_steps
from polyemb.quantize.model import linked_pairs, quantize_linears

__all__ = [
    "LINKED_MIN_COSINE",
    "OUTLIER_FACTOR",
    "SMOOTHING",
    "FloatChannels",
    "Int8Linear",
    "Quantized",
    "SharedInput",
    "activation_dtype",
    "calibrate",
    "check_int8_supported",
    "fix_input_ranges",
    "link",
    "linked_pairs",
    "outlier_channels",
    "quantize_linears",
    "quantize_rows",
    "smooth_inputs",
    "weight_steps",
]
