"""The command line: parse options, call the library, choose the exit code. No logic of its own."""

from __future__ import annotations

import gc
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import click

import ckptlint
from ckptlint.errors import CkptlintError
from ckptlint.graph.export import FORMATS as GRAPH_FORMATS
from ckptlint.output import write_atomically
from ckptlint.presets import EXPECTATIONS, presets
from ckptlint.report import FORMATS, renderer
from ckptlint.severity import FAIL_ON

# The commands import the library inside their bodies: `ckptlint --version` and `ckptlint rules`
# must stay quick, and numpy/networkx are only needed to read checkpoints.

EXIT_USAGE = 2
# A run allocates in bursts (imports, then facts per tensor) and frees nearly all of it by
# reference counting; at the default threshold (700) the collector ran ~130 times for nothing,
# about 30 ms of a DETR-size check. Cycles are still collected, every 50,000 allocations.
GC_THRESHOLDS = (50_000, 20, 100)


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--select a,b --select c`` -> (a, b, c)."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def _maps(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``--map backbone.0.body.=`` -> (("backbone.0.body.", ""),); ckptlint.options checks them."""
    pairs = []
    for value in values:
        old, sep, new = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r} is not OLD=NEW", param_hint="--map")
        pairs.append((old, new))
    return tuple(pairs)


def _choices(values: Sequence[str]) -> str:
    """The choices for --help; the value itself is checked by ckptlint.options, as in a
    configuration file and lint(), so that all three give the same message."""
    return f"[{'|'.join(values)}]"


def _emit(text: str, output: str | None) -> None:
    if output:
        write_atomically(output, text)
    else:
        click.echo(text, nl=False)


def _report_options(command: Callable[..., int]) -> Callable[..., int]:
    """The options check and diff share: the report's format and place, configuration, rule
    selection and the severity that fails."""
    for option in reversed((
        click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="text", show_default=True),
        click.option("-o", "--output", metavar="FILE", help="Write the report here (atomically) instead of stdout."),
        click.option("--config", "config_path", metavar="FILE", help="Configuration file to use (default: the "
                     "nearest pyproject.toml [tool.ckptlint] or ckptlint.toml)."),
        click.option("--select", multiple=True, metavar="NAMES", help="Only these rules (names or codes, "
                     "comma-separated)."),
        click.option("--ignore", multiple=True, metavar="NAMES", help="Skip these rules (names or codes, "
                     "comma-separated)."),
        click.option("--fail-on", metavar=_choices(FAIL_ON),
                     help="Exit 1 when a finding at or above this severity exists (default: error)."),
    )):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(ckptlint.__version__, prog_name="ckptlint")
def cli() -> None:
    """Static analysis for deep-learning checkpoints."""


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@_report_options
@click.option("--key", metavar="PATH",
              help="Where the state dict lies in the checkpoint (dotted, e.g. model or state_dict_ema).")
@click.option("--no-hash", is_flag=True,
              help="JSON: do not compute the files' SHA-256 (saves reading every byte; other formats never do).")
@click.option("--pretrained", multiple=True, metavar="FILE",
              help="The pretrained checkpoint the targets' weights should come from. Repeated: candidates, "
                   "ranked by how much of the target each explains; the first is the expected one.")
@click.option("--pretrained-key", metavar="PATH", help="--key for the pretrained checkpoint.")
@click.option("--scope", metavar="MODULE", help="Target module that should come from the pretrained one "
              "(default: inferred, e.g. backbone.0.body).")
@click.option("--map", "maps", multiple=True, metavar="OLD=NEW",
              help="Target key prefix OLD is pretrained prefix NEW; wins over inferred matches.")
@click.option("--expect", metavar=_choices(EXPECTATIONS),
              help="auto (default): decided from the file (training state) and the pairs (drift); copied: values "
                   "must equal the pretrained ones; finetuned: trainable ones may drift, frozen ones may not.")
@click.option("--preset", metavar=_choices(sorted(presets())), help="Scope and frozen tensors of a known model.")
@click.option("--max-drift", type=float, metavar="X",
              help="Under fine-tuning (inferred or --expect finetuned): largest relative change of a trainable "
                   "tensor (at least 0; default 0.25).")
@click.option("--min-score", type=float, metavar="PERCENT",
              help="Fail (low-transfer-score) when a target's transfer score is below this percentage (0 to 100).")
@click.option("--model", metavar="MODULE:FACTORY",
              help="Build the model with your own package.module:factory and report what load_state_dict "
                   "would say (missing, unexpected keys, shape mismatches).")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="Trust pickles to invoke this global (your own class); repeatable. Never overrides the denylist.")
@click.option("--baseline", metavar="FILE", help="Suppress findings recorded in this baseline file.")
@click.option("--write-baseline", metavar="FILE", help="Record every current finding in a baseline file.")
@click.option("-v", "--verbose", is_flag=True,
              help="Text report: every finding, and how each transfer was judged (not only one line per cause).")
@click.option("--jobs", "workers", type=click.IntRange(min=1), metavar="N",
              help="Lint the files in N local worker processes (1: in this process, file by file); the report "
                   "is the same whatever N.")
@click.option("--shard", metavar="k/N", help="Lint only shard k of N (a stable split by path, the same on every "
              "machine); with --format json the report keeps what `ckptlint merge` needs.")
@click.option("--cache", "cache_dir", metavar="DIR", help="Do not lint again a file whose content, options and "
              "ckptlint are unchanged: partial reports are kept in DIR (a folder only you can write).")
@click.option("--dask", "dask_address", metavar="ADDRESS",
              help="Lint the files on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); each "
                   "worker reads its own files. Needs pip install 'ckptlint[dask]'.")
def check(paths: tuple[str, ...], fmt: str, output: str | None, config_path: str | None, no_hash: bool,
          write_baseline: str | None, verbose: bool, workers: int | None, shard: str | None, cache_dir: str | None,
          dask_address: str | None, **given: Any) -> int:
    """Lint checkpoint files (.pt .pth .bin .ckpt .safetensors, shard indexes, model folders, glob
    patterns such as 'zoo/**/*.safetensors')."""
    from ckptlint.config import load_config, resolve_jobs
    from ckptlint.progress import Progress
    from ckptlint.results import Report
    from ckptlint.runner import run_jobs
    from ckptlint.targets import expand_paths, parse_shard, select_shard

    render = renderer(fmt, verbose)  # before the run: --verbose with another format is an error now
    if dask_address is not None and workers is not None:
        raise click.UsageError("--dask and --jobs: choose one (the cluster's workers are the jobs)")
    chosen_shard = parse_shard(shard) if shard is not None else None
    settings = {name.replace("_", "-"): value for name, value in given.items() if value not in (None, ())}
    for name in ("select", "ignore"):
        if name in settings:
            settings[name] = _names(settings[name])
    if "maps" in settings:
        settings["maps"] = _maps(settings["maps"])
    # Only the JSON report shows the files' SHA-256 (hashing reads every byte), only HTML draws histograms.
    expanded = expand_paths(paths)
    jobs = resolve_jobs(expanded, settings, load_config(config_path),
                        hash_files=fmt == "json" and not no_hash, histograms=fmt == "html")
    if workers is None and chosen_shard is None and cache_dir is None and dask_address is None:
        report: Report = run_jobs(jobs, progress=Progress(sys.stderr))
        _emit(render(report), output)
    else:  # partial reports, one per file, merged as they arrive (ckptlint/many.py)
        from ckptlint.many import merge_many
        from ckptlint.merge import render_partial

        options_of = {path: options for group, options in jobs for path in group}
        chosen = expanded
        if chosen_shard is not None:
            chosen = select_shard(chosen, *chosen_shard)
        tasks = [(path, options_of[path]) for path in chosen]
        fail_on = jobs[0][1].fail_on if jobs else "error"
        if dask_address is not None:
            from ckptlint.dask_backend import merge_many_dask

            merged, report = merge_many_dask(tasks, dask_address, fail_on=fail_on, cache_dir=cache_dir,
                                             progress=Progress(sys.stderr))
        else:
            merged, report = merge_many(tasks, fail_on=fail_on, jobs=workers or 1, cache_dir=cache_dir,
                                        progress=Progress(sys.stderr))
        _emit(render_partial(merged, report) if fmt == "json" and chosen_shard is not None else render(report),
              output)
    return _finish_check(report, fmt, output, write_baseline)


def _finish_check(report: Any, fmt: str, output: str | None, write_baseline: str | None) -> int:
    """After the report is written: the baseline, GitHub's step summary, errors and the one-line
    verdict on stderr, the exit code (check and merge alike)."""
    from ckptlint.baseline import render_baseline
    from ckptlint.report.github import render_step_summary
    from ckptlint.report.text import tally_line

    if write_baseline:
        write_atomically(write_baseline, render_baseline(report.findings + report.suppressed, report.source_root))
    if fmt == "github" and os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as summary:
            summary.write(render_step_summary(report))
    for error in report.errors:
        click.echo(f"ckptlint: {error.file}: {error.message}", err=True)
    if output:  # the report went to a file: still say in one line how the check went
        why = report.why_failed()
        click.echo(f"ckptlint: {'FAILED: ' + why + '; ' if why else ''}{tally_line(report)} Report: {output}",
                   err=True)
    return report.exit_code()


@cli.command("merge")
@click.argument("parts", nargs=-1, required=True, metavar="PARTS...")
@_report_options
@click.option("-v", "--verbose", is_flag=True, help="Text report: every finding, and how each transfer was judged.")
def merge(parts: tuple[str, ...], fmt: str, output: str | None, config_path: str | None, verbose: bool,
          **given: Any) -> int:
    """Merge partial JSON reports (`check --format json`, e.g. one per --shard) into one report, in
    any format; the exit code is check's. Run it where the check ran (paths in SARIF and baselines
    are relative to the repository); --config/--select/--ignore say which rules SARIF describes
    when the parts do not (parts written with --shard do)."""
    import json

    from ckptlint.config import job_settings, load_config
    from ckptlint.errors import ReportError
    from ckptlint.merge import Merger, PartError, enabled_rules
    from ckptlint.options import Options

    render = renderer(fmt, verbose)
    settings = {name.replace("_", "-"): value for name, value in given.items() if value not in (None, ())}
    for name in ("select", "ignore"):
        if name in settings:
            settings[name] = _names(settings[name])
    rule_settings = ("select", "ignore", "severity", "params", "per-key-ignores", "fail-on", "allow-globals")
    chosen = {name: value for name, value in job_settings(None, settings, load_config(config_path)).items()
              if name in rule_settings}
    options = Options.from_settings(chosen, hash_files=False)
    merged = Merger(fail_on=options.fail_on, rules=enabled_rules([options]))
    for path in parts:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ReportError(f"cannot read a JSON report ({getattr(exc, 'strerror', None) or exc})", path) from None
        try:
            merged.add(data)
        except PartError as exc:
            raise ReportError(str(exc), path) from None
    try:
        report = merged.result()
    except PartError as exc:
        raise ReportError(str(exc), ", ".join(parts)) from None
    _emit(render(report), output)
    return _finish_check(report, fmt, output, None)


@cli.command("diff")
@click.argument("files", nargs=-1, required=True, metavar="OLD NEW | --git BASE PATH")
@click.option("--git", "git_base", metavar="BASE",
              help="Read the old version from git: `diff --git BASE PATH` compares PATH with PATH at revision BASE "
                   "(a Git LFS pointer's object is used when present locally).")
@_report_options
@click.option("--preset", metavar=_choices(sorted(presets())),
              help="Which tensors training leaves frozen (the preset's frozen list): a frozen tensor that changed "
                   "is diff-frozen-changed.")
@click.option("--key", metavar="PATH", help="Where the state dict lies in both checkpoints (dotted, e.g. model).")
@click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
              help="Trust pickles to invoke this global (your own class); repeatable. Never overrides the denylist.")
@click.option("-v", "--verbose", is_flag=True, help="Text report: every changed tensor, not only the module tree.")
def diff(files: tuple[str, ...], git_base: str | None, fmt: str, output: str | None, config_path: str | None,
         verbose: bool, **given: Any) -> int:
    """What NEW changed against OLD: per tensor unchanged, cast, changed, resized, added or removed;
    the diff rules (CKP3xx) and the pickle rules decide the exit code, as for check."""
    from ckptlint.diff_runner import diff_paths
    from ckptlint.report.github import render_step_summary
    from ckptlint.report.text import tally_line

    if git_base is not None and len(files) != 1:
        raise click.UsageError("with --git BASE give one PATH: the working tree's file, compared with BASE's")
    if git_base is None and len(files) != 2:
        raise click.UsageError("give OLD and NEW (or --git BASE PATH)")
    render = renderer(fmt, verbose)
    settings = {name.replace("_", "-"): value for name, value in given.items() if value not in (None, ())}
    for name in ("select", "ignore"):
        if name in settings:
            settings[name] = _names(settings[name])
    report = diff_paths(files, settings, config_path, git_base=git_base, hash_files=fmt == "json")
    _emit(render(report), output)
    if fmt == "github" and os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as summary:
            summary.write(render_step_summary(report))
    for error in report.errors:
        click.echo(f"ckptlint: {error.file}: {error.message}", err=True)
    if output:
        why = report.why_failed()
        line = report.diff.summary_line() + ". " if report.diff else ""
        click.echo(f"ckptlint: {'FAILED: ' + why + '; ' if why else ''}{line}{tally_line(report)} Report: {output}",
                   err=True)
    return report.exit_code()


@cli.command("rules")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True,
              help="markdown: the table README.md shows (`python -m ckptlint.engine.rule_table` writes it there).")
def list_rules(fmt: str) -> int:
    """List every rule with its code, default severity and what it judges."""
    from ckptlint.engine.registry import load_all_rules
    from ckptlint.engine.rule_table import markdown_table

    rules = load_all_rules()
    if fmt == "markdown":
        click.echo(markdown_table(rules), nl=False)
        return 0
    header_width = max((len(rule.header) for rule in rules), default=0)
    for rule in rules:
        summary = textwrap.shorten(rule.docs["what"], 90)
        click.echo(f"{rule.code}  {rule.name:<24} {rule.severity:<8} {rule.header:<{header_width}} {summary}")
    return 0


@cli.command()
@click.argument("name")
def explain(name: str) -> int:
    """Print one rule's documentation (by name or code)."""
    from ckptlint.engine.registry import load_all_rules
    from ckptlint.selection import Selection

    rules = {ident: rule for rule in load_all_rules() for ident in (rule.name, rule.code)}
    if name not in rules:
        Selection(select=(name,)).enabled(rules.values())  # raises with a did-you-mean hint
    rule = rules[name]
    click.echo(f"{rule.code} {rule.name} (default severity: {rule.severity}; judges: {rule.header})\n")
    for title, section in (("What it finds", "what"), ("Why it matters", "why"), ("Example", "example"),
                           ("How to fix", "fix")):
        click.echo(f"## {title}\n{textwrap.fill(' '.join(rule.docs[section].split()), 88)}\n")
    if rule.params:
        click.echo("## Parameters")
        for param, value in rule.params.items():
            click.echo(f"  {param} = {value!r}")
    return 0


@cli.command()
@click.argument("path")
@click.option("--format", "fmt", type=click.Choice(sorted(GRAPH_FORMATS)), default="json", show_default=True)
@click.option("-o", "--output", metavar="FILE")
@click.option("--key", metavar="PATH")
def graph(path: str, fmt: str, output: str | None, key: str | None) -> int:
    """Write the module graph of a checkpoint (no tensor bytes are read)."""
    from ckptlint.graph.build import build_module_graph
    from ckptlint.io.open import open_checkpoint

    with open_checkpoint(path, key) as checkpoint:
        _emit(GRAPH_FORMATS[fmt](build_module_graph(checkpoint.tensors)), output)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure that is not "findings" exits 2 with one line on stderr."""
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        code: Any = cli.main(args=argv, prog_name="ckptlint", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"ckptlint: error: {exc.format_message()}{hint}", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"ckptlint: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except CkptlintError as exc:
        click.echo(f"ckptlint: error: {exc}", err=True)
        return EXIT_USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("ckptlint: interrupted", err=True)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - never a traceback, never exit 1 ("findings")
        click.echo(f"ckptlint: internal error: {type(exc).__name__}: {exc}", err=True)
        return EXIT_USAGE
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
