"""What one rule evaluation costs: every shipped rule's condition over the facts of a real run,
as a closure (ckptlint/engine/fast_condition.py) and in the Jinja2 sandbox, side by side.

    python bench/rule_eval.py [--repeat N]

The run is ``ckptlint check detr.pth --pretrained resnet50_tiny.pth`` (fixtures/cases/
transfer-selective). Each time the evaluator judges a subject, its facts are computed once
(an untimed call), then the condition is timed ``repeat`` times each way, the two ways taking
turns: the figures compare the same evaluations in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "fixtures" / "cases" / "transfer-selective"


def rule_eval(repeat: int = 20) -> dict[str, Any]:
    """Per-evaluation cost (µs) of the shipped rules' conditions: ``fast`` (closure), ``sandbox``
    (Jinja2), over ``evaluations`` real ones, and per rule; ``evaluate_*``: the whole
    ``Evaluator.evaluate`` (findings, with their evidence and message, included) each way."""
    import ckptlint
    from ckptlint.engine.evaluate import Evaluator

    real = Evaluator.evaluate
    from ckptlint.engine.rules import Expression

    fast_call = Expression.__call__
    times: dict[str, list[float]] = {way: [0.0] for way in ("fast", "sandbox", "evaluate_fast", "evaluate_sandbox")}
    per_rule: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    fast_runs = 0

    def timed(self: Evaluator, rule: Any, subject: Any, file: str, key: str | None, context: Any) -> Any:
        nonlocal fast_runs
        env = {**context, rule.subject_name: subject, "params": self._params[rule.code]}
        condition = rule.condition
        try:
            condition.in_sandbox(**env)  # the facts it reads are computed here, untimed
        except Exception:  # noqa: BLE001 - the real call below reports it
            return real(self, rule, subject, file, key, context)
        sandbox = condition.in_sandbox
        clock = time.perf_counter
        start = clock()
        for _ in range(repeat):
            condition(**env)
        fast = clock() - start
        start = clock()
        for _ in range(repeat):
            sandbox(**env)
        slow = clock() - start
        times["fast"][0] += fast
        times["sandbox"][0] += slow
        # the whole evaluation (the evaluator's own work, and the finding when there is one)
        start = clock()
        for _ in range(repeat):
            real(self, rule, subject, file, key, context)
        times["evaluate_fast"][0] += clock() - start
        Expression.__call__ = Expression.in_sandbox  # type: ignore[method-assign]
        try:
            start = clock()
            for _ in range(repeat):
                real(self, rule, subject, file, key, context)
            times["evaluate_sandbox"][0] += clock() - start
        finally:
            Expression.__call__ = fast_call  # type: ignore[method-assign]
        entry = per_rule[rule.code]
        entry[0] += 1
        entry[1] += fast
        entry[2] += slow
        fast_runs += condition._fast is not None
        return real(self, rule, subject, file, key, context)

    Evaluator.evaluate = timed  # type: ignore[method-assign]
    try:
        ckptlint.lint(CASE / "detr.pth", ROOT / "fixtures" / "models" / "resnet50_tiny.pth")
    finally:
        Evaluator.evaluate = real  # type: ignore[method-assign]
    count = sum(int(entry[0]) for entry in per_rule.values())
    scale = 1e6 / (max(count, 1) * repeat)
    return {"evaluations": count, "as_closure": fast_runs,
            **{f"{way}_us": total[0] * scale for way, total in times.items()},
            "per_rule": {code: (int(n), f * 1e6 / (n * repeat), s * 1e6 / (n * repeat))
                         for code, (n, f, s) in sorted(per_rule.items())}}


def row(repeat: int = 20) -> tuple[str, str, str, str]:
    """bench/run.py's row: a rule condition as a closure vs in the Jinja2 sandbox, per evaluation."""
    result = rule_eval(repeat)
    return (f"(i) rule condition, per evaluation ({result['evaluations']} of a DETR transfer check)",
            f"{result['fast_us']:.2f} us / {result['sandbox_us']:.2f} us (sandbox)",
            f"{result['fast_us'] / result['sandbox_us']:.2f}x", "< 5 us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    result = rule_eval(parser.parse_args().repeat)
    print(f"{result['evaluations']} evaluations ({result['as_closure']} as closures): "
          f"{result['fast_us']:.2f} µs each as closures, {result['sandbox_us']:.2f} µs in the sandbox "
          f"({result['sandbox_us'] / result['fast_us']:.1f}x); the whole Evaluator.evaluate "
          f"{result['evaluate_fast_us']:.2f} µs vs {result['evaluate_sandbox_us']:.2f} µs")
    for code, (n, fast, slow) in result["per_rule"].items():
        print(f"  {code}: {n:5d} evaluations, {fast:6.2f} µs vs {slow:6.2f} µs")


if __name__ == "__main__":
    main()
