"""The TensorFlow side of TFLite export: a stitch route rebuilt in TF ops from a family's
numpy weights (the same math as exporters/onnx_graph.py), saved as a SavedModel, and the
converter call per precision. Why this way and the XNNPACK-friendly graph choices: see
exporters/tflite_export.py. Elastic subnets: exporters/subnet_tflite.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from snrt.family import Family
from snrt.variants import Piece


class _TFRouteBuilder:
    """Rebuilds one route of a family in TensorFlow ops (the same math as
    exporters/onnx_graph.py). Weights are non-trainable tf.Variables (each created once), so
    that the route can be saved as a SavedModel whose weights live in a checkpoint rather than
    as constants inside the graph: converting DeiT-S took +0.85 GB that way vs +2.7 GB with
    captured constants (ViT-B: +4.5 GB vs out of memory at 22 GB)."""

    def __init__(self, family: Family, tf):
        self.family, self.tf = family, tf
        self._consts: dict[tuple, object] = {}

    def const(self, key: tuple, make) -> object:
        if key not in self._consts:
            self._consts[key] = self.tf.Variable(np.ascontiguousarray(make(), np.float32),
                                                 trainable=False)
        return self._consts[key]

    def save(self, pieces: list[Piece], directory: Path) -> None:
        """Write the route as a SavedModel (signature "serving_default": image -> logits)."""
        tf = self.tf
        forward = self.function(pieces)
        concrete = forward.get_concrete_function()  # traces: creates the variables it uses
        module = tf.Module()
        module.weights_used = list(self._consts.values())  # tracked, so they are saved
        module.forward = forward
        tf.saved_model.save(module, str(directory), signatures=concrete)

    def w(self, anchor, name: str, transpose: bool = False):
        return self.const((anchor.name, name, transpose),
                          lambda: anchor.weights[name].T if transpose else anchor.weights[name])

    def function(self, pieces: list[Piece]):
        """A tf.function: image float32 [1, C, H, W] (NCHW) -> {"logits": [1, classes]}."""
        tf = self.tf
        c0 = self.family.anchors[pieces[0].anchor].config
        spec = tf.TensorSpec([1, c0.in_chans, c0.img_size, c0.img_size], tf.float32,
                             name="image")

        @tf.function(input_signature=[spec])
        def forward(image):
            x = image
            for p in pieces:
                a = self.family.anchors[p.anchor]
                if p.kind == "embed":
                    x = self._embed(a, x)
                elif p.kind == "block":
                    x = self._block(a, p.index, x)
                elif p.kind == "stitch":
                    x = self._stitch(p, x)
                else:
                    x = self._head(a, p.norm, x)
            return {"logits": x}

        return forward

    # -- pieces ------------------------------------------------------------------------------
    def _linear(self, a, prefix: str, x):
        y = self.tf.matmul(x, self.w(a, prefix + ".weight", transpose=True))
        if prefix + ".bias" in a.weights:
            y = y + self.w(a, prefix + ".bias")
        return y

    def _layernorm(self, a, prefix: str, x):
        tf = self.tf
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        d = x - mean
        var = tf.reduce_mean(tf.square(d), axis=-1, keepdims=True)
        return (d * tf.math.rsqrt(var + a.config.norm_eps) * self.w(a, prefix + ".weight")
                + self.w(a, prefix + ".bias"))

    def _embed(self, a, image):
        tf, c = self.tf, a.config
        x = tf.transpose(image, [0, 2, 3, 1])  # NCHW -> NHWC, the layout TFLite convolves in
        kernel = self.const((a.name, "patch_embed.proj.weight", "HWIO"),
                            lambda: a.weights["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
        x = tf.nn.conv2d(x, kernel, strides=c.patch_size, padding="VALID")
        x = x + self.w(a, "patch_embed.proj.bias")
        x = tf.reshape(x, [1, c.num_patches, c.embed_dim])  # tokens in row-major patch order
        pos = self.w(a, "pos_embed")
        if c.no_embed_class:
            x = x + pos
        if c.num_prefix_tokens:
            toks = [self.w(a, "cls_token")] + ([self.w(a, "dist_token")] if c.distilled else [])
            x = tf.concat(toks + [x], axis=1)
        if not c.no_embed_class:
            x = x + pos
        return x

    def _block(self, a, i: int, x):
        tf, c = self.tf, a.config
        b = f"blocks.{i}."
        h = self._layernorm(a, b + "norm1", x)
        qkv = self._linear(a, b + "attn.qkv", h)

        def heads(t):  # [1, N, D] -> [1, heads, N, head_dim], 4-D ops only (XNNPACK)
            t = tf.reshape(t, [1, c.seq_len, c.num_heads, c.head_dim])
            return tf.transpose(t, [0, 2, 1, 3])

        q, k, v = (heads(t) for t in tf.split(qkv, 3, axis=-1))
        q = q * (1.0 / math.sqrt(c.head_dim))
        att = tf.nn.softmax(tf.matmul(q, k, transpose_b=True), axis=-1)
        o = tf.transpose(tf.matmul(att, v), [0, 2, 1, 3])
        o = self._linear(a, b + "attn.proj", tf.reshape(o, [1, c.seq_len, c.embed_dim]))
        if c.layer_scale:
            o = o * self.w(a, b + "ls1.gamma")
        x = x + o
        h = self._layernorm(a, b + "norm2", x)
        h = tf.nn.gelu(self._linear(a, b + "mlp.fc1", h), approximate=False)  # exact (erf)
        h = self._linear(a, b + "mlp.fc2", h)
        if c.layer_scale:
            h = h * self.w(a, b + "ls2.gamma")
        return x + h

    def _stitch(self, p: Piece, x):
        layer = self.family.stitch_layers[(p.anchor, p.end)][p.index]
        key = ("stitch", p.anchor, p.end, p.index)
        w = self.const(key + ("weight^T",), lambda: layer.weight.T)
        b = self.const(key + ("bias",), lambda: layer.bias)
        return self.tf.matmul(x, w) + b

    def _head(self, a, norm: bool, x):
        tf, c = self.tf, a.config
        if norm and not c.fc_norm:
            x = self._layernorm(a, "norm", x)
        if c.global_pool == "avg":
            pooled = tf.reduce_mean(x[:, c.num_prefix_tokens:], axis=1)
            if c.fc_norm:
                pooled = self._layernorm(a, "fc_norm", pooled)
            return self._linear(a, "head", pooled)

        def token(i):  # x[:, i:i+1] + reshape: a non-shrinking slice stays in XNNPACK
            return tf.reshape(x[:, i:i + 1], [1, c.embed_dim])

        logits = self._linear(a, "head", token(0))
        if c.distilled:  # timm eval: mean of the class-token head and the distillation head
            logits = (logits + self._linear(a, "head_dist", token(1))) * 0.5
        return logits


def _convert(tf, saved_model: Path, precision: str) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(converter.convert())
