"""The parity summary: largest absolute error per compared tensor, per case, for the closing note."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .harness import Comparison


@dataclass
class Row:
    """One compared tensor. Errors are max |ours - upstream|; for masks, ``differ`` counts differing pixels."""

    family: str
    case: str
    step: str
    tensor: str
    kind: str
    chained_max_abs_err: float
    isolated_max_abs_err: float
    differ: int | None
    passed: bool

    @property
    def worst(self) -> float:
        return max(self.chained_max_abs_err, self.isolated_max_abs_err)


@dataclass
class ParityReport:
    rows: list[Row] = field(default_factory=list)
    written_to: list[Path] = field(default_factory=list)

    def record(self, family: str, case: str, step: str, kind: str, chained: Comparison, isolated: Comparison) -> None:
        differ = None if kind == "float" else max(chained.mismatches or 0, isolated.mismatches or 0)
        self.rows.append(
            Row(
                family=family,
                case=case,
                step=step,
                tensor=chained.name,
                kind=kind,
                chained_max_abs_err=chained.max_abs_err,
                isolated_max_abs_err=isolated.max_abs_err,
                differ=differ,
                passed=chained.passed and isolated.passed,
            )
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(row) for row in self.rows], indent=1) + "\n", encoding="utf-8")
        self.written_to.append(path)

    def table(self) -> list[str]:
        """One line per compared tensor, then per case the largest float error and the mask mismatches."""
        lines = [f"{'case':<12} {'step':<36} {'tensor':<42} {'chained':>10} {'isolated':>10}  verdict"]
        for row in sorted(self.rows, key=lambda r: (r.case, r.step, r.tensor)):
            verdict = "ok" if row.passed else "FAIL"
            if row.differ is not None:
                verdict += f", {row.differ} {'px' if row.kind == 'binary' else 'values'} differ"
            lines.append(
                f"{row.case:<12} {row.step:<36} {row.tensor:<42} "
                f"{row.chained_max_abs_err:>10.3e} {row.isolated_max_abs_err:>10.3e}  {verdict}"
            )
        for case in sorted({row.case for row in self.rows}):
            rows = [row for row in self.rows if row.case == case]
            floats = [row for row in rows if row.kind == "float"]
            masks = [row for row in rows if row.kind == "binary"]
            exact = [row for row in rows if row.kind == "exact"]
            summary = f"{case}: {len(rows)} tensors, {sum(not r.passed for r in rows)} failing"
            if floats:
                worst = max(floats, key=lambda r: r.worst)
                summary += f"; largest abs error {worst.worst:.3e} ({worst.tensor})"
            if masks:
                summary += f"; mask pixels differing: {sum(r.differ or 0 for r in masks)} over {len(masks)} masks"
            if exact:
                summary += f"; exact tensors: {len(exact)}, values differing: {sum(r.differ or 0 for r in exact)}"
            lines.append(summary)
        return lines
