"""What the page shows of the runtime's variants and tasks: each variant's kind ("stitch",
"anchor" or "subnet") and bundle (with several bundles on one front, e.g. `--bundle default
--bundle elastic`, the page and the switch log say which family a variant comes from), the
task selector's choices, and a task's recorded top-1 on a variant. Works on a Runtime and on
a MultiRuntime alike (snrt.multi_bundle)."""

from __future__ import annotations

from typing import Any

from snrt.bundle import VariantInfo
from snrt.multi_bundle import bundle_of, kind_of


class Catalog:
    def __init__(self, rt) -> None:
        self.rt = rt
        self._origin: dict[str, tuple[str, str]] = {}  # id -> (kind, bundle name)

    def origin(self, vid: str | None) -> tuple[str | None, str | None]:
        """(kind, bundle name) of variant `vid` (None: (None, None))."""
        if vid is None:
            return None, None
        got = self._origin.get(vid)
        if got is None:
            got = self._origin[vid] = (kind_of(self.rt, vid), bundle_of(self.rt, vid).name)
        return got

    def variant_json(self, v: VariantInfo, candidates: set[str]) -> dict[str, Any]:
        kind, bundle = self.origin(v.id)
        return {"id": v.id, "cfg_id": v.cfg_id, "flops": v.flops, "params": v.params,
                "top1": v.top1, "is_anchor": v.is_anchor, "kind": kind, "bundle": bundle,
                "candidate": v.id in candidates}

    def switch_json(self, from_id: str | None, to_id: str) -> dict[str, Any]:
        """The kinds and bundles a switch log entry names."""
        fk, fb = self.origin(from_id)
        tk, tb = self.origin(to_id)
        return {"from_kind": fk, "to_kind": tk, "from_bundle": fb, "to_bundle": tb}

    def kinds(self) -> dict[str, int]:
        """How many variants of each kind the runtime holds."""
        out: dict[str, int] = {}
        for v in self.rt.variants:
            k = self.origin(v.id)[0]
            out[k] = out.get(k, 0) + 1
        return out

    def backbone_head_label(self) -> str:
        labels = self.rt.bundle.labels or []
        if labels and all(lab.isdigit() for lab in labels):
            return "digits (the backbone's head)"
        return "the backbone's head"

    def task_top1(self, task: str | None, vid: str) -> float | None:
        """The top-1 of `task` (None: the backbone's head) on variant `vid`, when recorded."""
        if task is None:
            return self.rt.bundle.variant(vid).top1
        t = next((t for t in self.rt.tasks if t.name == task), None)
        rec = (t.accuracy or {}).get(vid) if t is not None else None
        return rec.get("top1") if isinstance(rec, dict) else None

    def tasks(self) -> list[dict[str, Any]]:
        """What the task selector offers: the backbone's own head (task null), then every
        task of the runtime: name, labels, variants it runs on, top-1 on the active variant."""
        rt = self.rt
        cur = rt.current.id
        out = [{"task": None, "label": self.backbone_head_label(),
                "labels": list(rt.bundle.labels or []),
                "variants": len(rt.variants), "top1": rt.current.top1}]
        for t in rt.tasks:
            acc = (t.accuracy or {}).get(cur) or {}
            out.append({"task": t.name, "label": t.name, "labels": list(t.labels),
                        "variants": len(t.variants), "top1": acc.get("top1")})
        return out
