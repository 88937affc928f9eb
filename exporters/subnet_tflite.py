"""TFLite export of elastic subnets (issue 15 item 5): the subnet half of exporters/tflite_export.

A chosen subnet (listed or any member of the space) is rebuilt in TensorFlow ops from the
bundle's one weights.bin, sliced exactly as its ONNX pieces slice it (exporters/subnet_graph.py:
first W channels, first heads*head_dim rows of each of q/k/v, first `hidden` MLP units, POA's
D/W (fc2: H/hidden) scale folded into the weights as the float32 product onnxruntime folds,
biases unscaled), saved as a SavedModel and converted by the same converter, precisions and
verification as stitches (tflite_export._export_one). The reference is the subnet's standalone
ONNX graph (the one `snrt-export subnets --standalone ID` writes) built from the bundle's
weights and run in onnxruntime.

The manifest records TFLite files per listed variant; so a member that is not listed yet is
appended to the bundle's listed variants (next index and cfg_id) when its TFLite export is
asked for. Without --variants the listed subnets are exported, refused when more than
MAX_DEFAULT_VARIANTS (each file is converted and verified separately).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from snrt.bundle import Bundle, Manifest, VariantInfo, update_manifest
from snrt.errors import SnrtError
from snrt.family.supernet import Supernet
from snrt.variants.subnets import Subnet, SubnetSpace

MAX_DEFAULT_VARIANTS = 20


def _split_ids(variants: Iterable[str | int]) -> list[str | int]:
    """--variants a,b c -> [a, b, c] (commas or spaces)."""
    out: list[str | int] = []
    for k in variants:
        if isinstance(k, str):
            out += [s.strip() for s in k.split(",") if s.strip()]
        else:
            out.append(k)
    return out


def choose_subnets(bundle: Bundle, variants: Iterable[str | int] | None) -> list[str]:
    """The subnet ids to export, checked (an id outside the space raises SubnetConfigError
    naming the position and the allowed values) before any work."""
    if variants is None:
        ids = [v.id for v in bundle.variants]
        if len(ids) > MAX_DEFAULT_VARIANTS:
            raise SnrtError(
                f"{bundle.path.name} lists {len(ids)} subnets; exporting all of them as TFLite "
                f"(each converted and verified) is more than {MAX_DEFAULT_VARIANTS}: choose "
                f"with --variants ID,ID,... (e.g. --variants {','.join(ids[:2])}); any member "
                "of the space may be given, listed or not")
        return ids
    ids = [bundle.variant(k).id for k in _split_ids(variants)]
    if not ids:
        raise SnrtError("--variants: no subnet ids given")
    return list(dict.fromkeys(ids))


def list_members(bundle: Bundle, ids: list[str]) -> list[str]:
    """Append the ids the bundle does not list yet to its listed variants (the manifest is
    rewritten only then); returns them."""
    added: list[str] = []
    listed = {v.id for v in bundle.variants}
    if all(i in listed for i in ids):
        return added

    def mutate(m: Manifest, _path: Path) -> None:
        from snrt.variants import variant_space_from_json

        space = variant_space_from_json(m.family)
        have = {v.id for v in m.variants}
        nxt = max([v.index for v in m.variants] + [v.cfg_id for v in m.variants] + [-1]) + 1
        for sid in ids:
            if sid in have:
                continue
            m.variants.append(VariantInfo(index=nxt, cfg_id=nxt, graph=None,
                                          **space.variant_record(sid)))
            have.add(sid)
            added.append(sid)
            nxt += 1

    update_manifest(bundle.path, mutate)
    return added


class SubnetTFLite:
    """The supernet of a subnets bundle, and per subnet: its TF SavedModel and its ONNX
    reference logits."""

    def __init__(self, bundle: Bundle):
        from .subnet_export import supernet_from_bundle

        self.space: SubnetSpace = bundle.variant_space()
        self.net = supernet_from_bundle(bundle)

    def reference(self, sid: str, x: np.ndarray) -> np.ndarray:
        """onnxruntime on the subnet's standalone ONNX graph (as --standalone writes it)."""
        import onnxruntime as ort

        from .subnet_graph import SubnetGraphBuilder

        s = self.space.get(sid).subnet
        model = SubnetGraphBuilder(self.net, self.space, inline=True).graph(s.pieces(), s.id)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"image": x[i:i + 1]})[0]
                               for i in range(len(x))])

    def save(self, tf, sid: str, directory: Path) -> None:
        _TFSubnetBuilder(self.net, tf).save(self.space.get(sid).subnet, directory)


class _TFSubnetBuilder:
    """One subnet in TensorFlow ops (the math of exporters/subnet_graph.py; the XNNPACK-friendly
    shapes of tflite_export._TFRouteBuilder: static batch 1, NCHW input, 4-D attention)."""

    def __init__(self, net: Supernet, tf):
        self.net, self.tf = net, tf
        self.D, self.H = net.config.embed_dim, net.config.mlp_hidden
        self._vars: list = []

    def var(self, a: np.ndarray):
        v = self.tf.Variable(np.ascontiguousarray(a, np.float32), trainable=False)
        self._vars.append(v)
        return v

    def save(self, s: Subnet, directory: Path) -> None:
        tf = self.tf
        forward = self.function(s)
        concrete = forward.get_concrete_function()
        module = tf.Module()
        module.weights_used = list(self._vars)
        module.forward = forward
        tf.saved_model.save(module, str(directory), signatures=concrete)

    def function(self, s: Subnet):
        tf, c = self.tf, self.net.config
        spec = tf.TensorSpec([1, c.in_chans, c.img_size, c.img_size], tf.float32, name="image")
        w = self.net.weights
        W, D, H = s.width, self.D, self.H
        hd = self.net.head_dim
        params = {"embed": (self.var(w["patch_embed.proj.weight"][:W].transpose(2, 3, 1, 0)),
                            self.var(w["patch_embed.proj.bias"][:W]),
                            self.var(w["cls_token"].reshape(1, 1, -1)[..., :W]),
                            self.var(w["pos_embed"][..., :W]))}
        blocks = []
        for b, heads, m in zip(s.blocks, s.heads, s.hidden):
            p, a = f"blocks.{b}.", heads * hd
            sc = np.float32(D / W) if s.rescale else np.float32(1.0)
            sc2 = np.float32(H / m) if s.rescale else np.float32(1.0)
            qkv_w = w[p + "attn.qkv.weight"]
            qkv_b = w[p + "attn.qkv.bias"]
            rows = np.concatenate([np.arange(j * D, j * D + a) for j in range(3)])
            blk = {
                "norm1": (self.var(w[p + "norm1.weight"][:W]), self.var(w[p + "norm1.bias"][:W])),
                "norm2": (self.var(w[p + "norm2.weight"][:W]), self.var(w[p + "norm2.bias"][:W])),
                "qkv": (self.var((qkv_w[rows][:, :W] * sc).T), self.var(qkv_b[rows])),
                "proj": (self.var((w[p + "attn.proj.weight"][:W, :a] * sc).T),
                         self.var(w[p + "attn.proj.bias"][:W])),
                "fc1": (self.var((w[p + "mlp.fc1.weight"][:m, :W] * sc).T),
                        self.var(w[p + "mlp.fc1.bias"][:m])),
                "fc2": (self.var((w[p + "mlp.fc2.weight"][:W, :m] * sc2).T),
                        self.var(w[p + "mlp.fc2.bias"][:W])),
                "heads": heads, "a": a,
            }
            if c.layer_scale:
                blk["ls1"] = self.var(w[p + "ls1.gamma"][:W])
                blk["ls2"] = self.var(w[p + "ls2.gamma"][:W])
            blocks.append(blk)
        norm = (self.var(w["norm.weight"][:W]), self.var(w["norm.bias"][:W]))
        head = ((self.var(w["head.weight"][:, :W].T), self.var(w["head.bias"]))
                if self.net.has_head else None)
        N, eps = c.seq_len, c.norm_eps

        def ln(x, wb):
            mean = tf.reduce_mean(x, axis=-1, keepdims=True)
            d = x - mean
            var = tf.reduce_mean(tf.square(d), axis=-1, keepdims=True)
            return d * tf.math.rsqrt(var + eps) * wb[0] + wb[1]

        def lin(x, wb):
            return tf.matmul(x, wb[0]) + wb[1]

        @tf.function(input_signature=[spec])
        def forward(image):
            kernel, bias, cls, pos = params["embed"]
            x = tf.transpose(image, [0, 2, 3, 1])
            x = tf.nn.conv2d(x, kernel, strides=c.patch_size, padding="VALID") + bias
            x = tf.reshape(x, [1, N - 1, W])
            x = tf.concat([cls, x], axis=1) + pos
            for blk in blocks:
                h = ln(x, blk["norm1"])
                qkv = lin(h, blk["qkv"])

                def split_heads(t, n=blk["heads"]):
                    return tf.transpose(tf.reshape(t, [1, N, n, hd]), [0, 2, 1, 3])

                q, k, v = (split_heads(t) for t in tf.split(qkv, 3, axis=-1))
                q = q * (1.0 / math.sqrt(hd))
                att = tf.nn.softmax(tf.matmul(q, k, transpose_b=True), axis=-1)
                o = tf.transpose(tf.matmul(att, v), [0, 2, 1, 3])
                o = lin(tf.reshape(o, [1, N, blk["a"]]), blk["proj"])
                if "ls1" in blk:
                    o = o * blk["ls1"]
                x = x + o
                h = ln(x, blk["norm2"])
                h = tf.nn.gelu(lin(h, blk["fc1"]), approximate=False)
                h = lin(h, blk["fc2"])
                if "ls2" in blk:
                    h = h * blk["ls2"]
                x = x + h
            x = ln(x, norm)
            pooled = tf.reshape(x[:, :1], [1, W])  # the class token (non-shrinking slice)
            return {"logits": lin(pooled, head) if head is not None else pooled}

        return forward


__all__ = ["MAX_DEFAULT_VARIANTS", "SubnetTFLite", "choose_subnets", "list_members"]
