"""The claim loop: kind by kind, in the declared order, findings are grouped and a group whose
condition holds becomes one diagnosis. Each finding joins at most one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from jinja2.exceptions import SecurityError, TemplateError

from ckptlint.diagnose.group import Group, Member
from ckptlint.diagnose.index import FileIndex
from ckptlint.diagnose.kinds import SOURCE, Kind, kinds
from ckptlint.engine.evaluate import plain
from ckptlint.errors import RuleError
from ckptlint.results import Diagnosis, Finding, PairRecord, Report
from ckptlint.severity import severity_rank

# How a finding of a rule the report does not describe is read: about the target tensor it names.
TENSOR_RULE = {"subject": "tensor", "only_in": None}


class _Files:
    """The report's files as the diagnoses see them: one index per file, built on first use."""

    def __init__(self, report: Report) -> None:
        self.transfers = report.transfer.by_file if report.transfer else {}
        self.pretrained = {f.path for f in report.files if f.role == "pretrained"}
        self.stripped = {f.path: f.stripped_prefix for f in report.files}
        self.rules = {rule["name"]: rule for rule in report.rules}
        self.pairs: dict[str, list[PairRecord]] = defaultdict(list)
        for pair in report.pairs:
            self.pairs[pair.file].append(pair)
        self._indexes: dict[str, FileIndex] = {}
        self._members: dict[Finding, Member] = {}

    def index(self, file: str) -> FileIndex:
        if file not in self._indexes:
            transfer = self.transfers.get(file)
            stripped = self.stripped.get(transfer.pretrained, "") if transfer else ""
            self._indexes[file] = FileIndex(file, self.pairs.get(file, []), transfer, stripped)
        return self._indexes[file]

    def member(self, finding: Finding) -> Member:
        if finding not in self._members:
            index = self.index(finding.file)
            self._members[finding] = Member(finding, index.subject(finding, self.rules.get(finding.name, TENSOR_RULE)),
                                            index)
        return self._members[finding]

    def home(self, group: str, finding: Finding) -> str:
        """The file a diagnosis of this group lies in."""
        transfer = self.transfers.get(finding.file)
        if group == "pretrained" and finding.file not in self.pretrained and transfer is not None:
            return transfer.pretrained
        return finding.file


def _evaluate(kind: Kind, what: str, call: Callable[..., Any], **variables: Any) -> Any:
    try:
        return call(**variables)
    except (TemplateError, SecurityError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RuleError(f"diagnosis {kind.name} ({what}) failed: {type(exc).__name__}: {exc}", SOURCE) from None


def _claims(kind: Kind, member: Member) -> bool:
    subject = member.subject
    return bool(_evaluate(kind, f"claims.{member.finding.name}", kind.claims[member.finding.name],
                          finding=member.finding, leaf=subject.leaf, verdict=subject.verdict,
                          module_verdicts=list(subject.module_verdicts)))


def _diagnosis(kind: Kind, group: Group, facts: dict[str, Any]) -> Diagnosis:
    evidence = {name: plain(_evaluate(kind, f"evidence.{name}", expression, **facts))
                for name, expression in kind.evidence.items()}

    def say(template: Any, what: str) -> str:
        return " ".join(_evaluate(kind, what, template.render, **facts, evidence=evidence).split())

    return Diagnosis(
        kind=kind.name, file=group.file, title=say(kind.title, "title"), fix=say(kind.fix, "fix"),
        severity=max((f.severity for f in group.findings), key=severity_rank),
        modules=tuple(group.modules), tensors=tuple(group.tensors), parameters=sum(group.tensors.values()),
        evidence=evidence, findings=tuple(group.findings),
    )


def diagnose(report: Report) -> list[Diagnosis]:
    """The report's findings grouped by cause, most severe first; findings no kind claims stay
    on their own (``Report.undiagnosed``)."""
    files = _Files(report)
    claimed: set[Finding] = set()
    diagnoses = []
    for kind in kinds():
        groups: dict[str, list[Member]] = defaultdict(list)
        for finding in report.findings:
            if finding.name in kind.claims and finding not in claimed:
                member = files.member(finding)
                if _claims(kind, member):
                    groups[files.home(kind.group, finding)].append(member)
        for file, members in groups.items():
            group = Group(file, members, files.index(file))
            facts = group.facts()
            if kind.when is None or _evaluate(kind, "when", kind.when, **facts):
                diagnoses.append(_diagnosis(kind, group, facts))
                claimed.update(group.findings)
    return sorted(diagnoses, key=lambda d: (-severity_rank(d.severity), d.file))
