"""The `matcard` command line: a thin Typer shell over the matcard Python API.

Exit codes: 0 success, 1 runtime failure, 2 bad usage (unknown dataset/task, invalid config).
Heavy imports happen inside the commands so that `matcard --help` is instant.
Each command group lives in its own marked section below.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional  # noqa: F401  (Optional is used by command signatures)

import typer

from matcard import summary_tables
from matcard._version import __version__
from matcard.console import console, escape, print_wide
from matcard.errors import MatcardError
from matcard.run_tables import decision_tables, metrics_tables

app = typer.Typer(
    name="matcard",
    help="Imbalance-aware classifiers for crystal structures: datasets, training, evaluation, screening.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"matcard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    cif_parser: Annotated[
        str | None,
        typer.Option(
            "--cif-parser",
            help="CIF reader: fast (gemmi, pymatgen for anything it does not reproduce exactly) or "
            "pymatgen (the reference path). Default: MATCARD_CIF_PARSER, else fast.",
        ),
    ] = None,
) -> None:
    """matcard: find the minority class in crystal data."""
    import os

    from matcard.structures.fastcif import CIF_PARSER_ENV, resolve_cif_parser

    if cif_parser is not None:
        try:
            # An environment variable reaches every parser process and the dataset cache alike.
            os.environ[CIF_PARSER_ENV] = resolve_cif_parser(cif_parser)
        except MatcardError as err:
            raise fail(err) from err


def fail(error: MatcardError) -> typer.Exit:
    """Report a MatcardError on stderr and return the Exit carrying its exit code."""
    console.print(f"[bold red]error:[/] {escape(error)}")
    return typer.Exit(code=error.exit_code)


# === datasets: datasets / download / inspect =====================================


def _human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


@app.command("datasets")
def datasets_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON on stdout.")] = False,
) -> None:
    """List the registered datasets: kind, size, tasks, licence, and whether they are cached."""
    import json

    from rich.table import Table

    from matcard.datasets.inspect import registry_table

    try:
        rows = registry_table()
    except MatcardError as err:
        raise fail(err) from err
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="matcard datasets")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "rows", "size", "tasks", "licence"):
        table.add_column(column, overflow="fold")
    table.add_column("cached", no_wrap=True)
    for row in rows:
        table.add_row(
            row["name"],
            row["kind"],
            f"{row['n_rows']:,}" if row["n_rows"] else "query",
            _human_bytes(row["size_bytes"]),
            ", ".join(row["tasks"]),
            row["licence"],
            row["cached"],
        )
    print_wide(table)


@app.command("download")
def download_command(
    names: Annotated[list[str] | None, typer.Argument(help="Registered dataset name(s).")] = None,
    dest: Annotated[
        str | None,
        typer.Option(help="Cache folder (default: MATCARD_DATA_DIR, data/ in a checkout, user cache)."),
    ] = None,
    mirror: Annotated[
        str | None, typer.Option(help="Base URL (http://, https://, file://) holding <folder>/<file>.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download again even if a verified copy exists.")
    ] = False,
    all_datasets: Annotated[bool, typer.Option("--all", help="Download every downloadable dataset.")] = False,
) -> None:
    """Download datasets (streamed, resumable, sha256-verified, atomically placed in the cache)."""
    from rich.table import Table

    from matcard.datasets import REGISTRY, get_spec
    from matcard.datasets.download import download_files
    from matcard.errors import UsageError

    try:
        if all_datasets:
            specs = [s for s in REGISTRY.values() if s.files]
        elif names:
            specs = [get_spec(n) for n in names]
        else:
            raise UsageError("give a dataset name (see `matcard datasets`) or --all")
        table = Table(title="datasets")
        root = None
        statuses: list[str] = []
        for column in ("dataset", "file", "size", "sha256", "status"):
            table.add_column(column)
        for spec in specs:
            if spec.embedded or spec.live:
                kind = "embedded in pymatgen" if spec.embedded else "queried live: inspect it with --query"
                print_wide(f"{spec.name}: nothing to download ({kind})")
                continue
            for item in download_files(spec, root=dest, mirror=mirror, force=force):
                size = _human_bytes(item.path.stat().st_size)
                status = "already cached (verified)" if item.status == "cached" else item.status
                table.add_row(
                    spec.name, item.remote.relative_path, size, item.remote.sha256[:16] + "…", status
                )
                statuses.append(item.status)
                root = item.path.parent.parent
    except MatcardError as err:
        raise fail(err) from err
    if table.row_count:
        print_wide(table, 120)
        fetched = len(statuses) - statuses.count("cached")
        print_wide(
            f"[green]all checksums verified[/]: {fetched} downloaded, {statuses.count('cached')} already "
            f"cached; cache: {escape(root)}"
        )


@app.command("inspect")
def inspect_command(
    source: Annotated[
        str, typer.Argument(help="A registered dataset name, or a file / folder / glob of structures.")
    ],
    task: Annotated[
        str | None,
        typer.Option(
            help="Label task: a registered name, or crystal_system[:symprec=X], COL>=V, LO<=COL<=HI, "
            "bins:COL:E1,E2, categorical:COL."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    mirror: Annotated[str | None, typer.Option(help="Mirror base URL for registry downloads.")] = None,
    disorder: Annotated[str, typer.Option(help="Partial occupancies: skip, keep or majority.")] = "skip",
    timeout: Annotated[
        float, typer.Option(help="Seconds allowed per structure file (grows with file size).")
    ] = 10.0,
    workers: Annotated[int | None, typer.Option(help="Parser processes (default: CPUs, max 8).")] = None,
    query: Annotated[
        list[str] | None,
        typer.Option(
            help="Live-dataset filter KEY=VALUE, repeatable (materials-project: elements=Si,O "
            "num_elements=2-3 max_sites=20 limit=500)."
        ),
    ] = None,
) -> None:
    """Structures, failures with reasons, class counts and imbalance ratio of a dataset or path."""
    import json

    from matcard.datasets.inspect import inspect_source
    from matcard.errors import UsageError

    try:
        if disorder not in {"skip", "keep", "majority"}:
            raise UsageError(f"--disorder must be skip, keep or majority, got {disorder!r}")
        filters: dict[str, str] = {}
        for item in query or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--query takes KEY=VALUE, got {item!r}")
            filters[key.strip()] = value.strip()
        summary = inspect_source(
            source,
            task,
            query=filters,
            mirror=mirror,
            disorder=disorder,
            timeout=timeout,
            workers=workers,
            progress=True,  # on stderr: --json output on stdout stays clean
        )
    except MatcardError as err:
        raise fail(err) from err
    # Nothing readable at all is a runtime failure (exit 1), after the report has been shown.
    nothing = summary["n_rows"] == 0
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        if nothing:
            raise typer.Exit(code=1)
        return
    for table in summary_tables.inspect_tables(summary, source):
        print_wide(table)
    if nothing:
        console.print(f"[bold red]error:[/] no structures could be read from {escape(source)}")
        raise typer.Exit(code=1)


# === featurize ===================================================================


_OPTION_NAMES = {
    "max_neighbors": "--max-neighbors",
    "node_features": "--node-features",
    "model_version": "--model-version",
}


def _featurizer_options(
    featurizer: str,
    **by_kind: dict[str, object],
) -> dict[str, object]:
    """The options of ``featurizer`` (None = default); options given for another featurizer are an error."""
    from matcard.errors import UsageError

    if featurizer not in by_kind:
        raise UsageError(f"--featurizer must be one of {', '.join(by_kind)}, not {featurizer!r}")
    used = [
        _OPTION_NAMES.get(name, f"--{name}")
        for kind, options in by_kind.items()
        if kind != featurizer
        for name, value in options.items()
        if value is not None
    ]
    if used:
        raise UsageError(f"{', '.join(used)} do(es) not apply to --featurizer {featurizer}")
    options = {k: v for k, v in by_kind[featurizer].items() if v is not None}
    if isinstance(options.get("descriptors"), str):
        options["descriptors"] = tuple(d.strip() for d in str(options["descriptors"]).split(","))
    return options


@app.command("featurize")
def featurize_command(
    source: Annotated[
        str, typer.Argument(help="A registered dataset name, or a file / folder / glob of structures.")
    ],
    task: Annotated[
        str | None, typer.Option(help="Label task (checked, counted, and saved beside the features).")
    ] = None,
    featurizer: Annotated[
        str,
        typer.Option(help="graph (crystal graphs), composition (matminer) or chgnet (pretrained CHGNet)."),
    ] = "graph",
    cutoff: Annotated[float | None, typer.Option(help="Graph neighbour cutoff in Å (default 8).")] = None,
    max_neighbors: Annotated[
        int | None, typer.Option(help="Neighbours kept per atom in nearest mode (default 12).")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="Graph edges: nearest (k nearest) or all.")] = None,
    node_features: Annotated[
        str | None, typer.Option(help="Graph node features: cgcnn (element properties) or atomic_number.")
    ] = None,
    descriptors: Annotated[
        str | None,
        typer.Option(
            help="Composition descriptors, comma-separated: magpie, stoichiometry, valence_orbital, "
            "ion_property (default: the first three)."
        ),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option(help="Worker processes (0 = all cores; default: all cores for big jobs).")
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Folder for the featurized dataset (default: the feature cache).")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Items per shard file.")] = 4096,
    mirror: Annotated[str | None, typer.Option(help="Mirror base URL for registry downloads.")] = None,
    disorder: Annotated[
        str, typer.Option(help="Partial occupancies in files: skip, keep or majority.")
    ] = "skip",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds allowed to parse one structure file (grows with file size).")
    ] = 10.0,
    pooling: Annotated[
        str | None, typer.Option(help="CHGNet read-out: crystal (64 numbers) or crystal+atoms (320).")
    ] = None,
    model_version: Annotated[
        str | None, typer.Option(help="CHGNet checkpoint shipped with chgnet (default 0.3.0).")
    ] = None,
) -> None:
    """Featurize a dataset into crystal graphs, composition descriptors or pretrained CHGNet features
    (parallel, cached, sharded)."""
    import json

    from matcard.featurize.api import featurize_dataset, make_featurizer

    try:
        options = _featurizer_options(
            featurizer,
            graph={
                "cutoff": cutoff,
                "max_neighbors": max_neighbors,
                "mode": mode,
                "node_features": node_features,
            },
            composition={"descriptors": descriptors},
            chgnet={"pooling": pooling, "model_version": model_version},
        )
        built = make_featurizer(featurizer, **options)
        dataset = _load_for_featurize(source, mirror=mirror, disorder=disorder, timeout=timeout)
        report = featurize_dataset(
            dataset, built, task=task, out=out, jobs=jobs, shard_size=shard_size, progress=not as_json
        )
        if task is not None:
            report.write_labels(task)
    except MatcardError as err:
        raise fail(err) from err

    summary = report.summary()
    summary["read_failures"] = len(getattr(dataset, "failures", []) or [])
    if as_json:
        summary["failed_items"] = [vars(f) for f in report.failures]
        summary["unreadable"] = [f.to_dict() for f in getattr(dataset, "failures", []) or []]
        typer.echo(json.dumps(summary, indent=2, default=str))
        if not summary["count"]:  # nothing featurized: a runtime failure, after the report
            raise typer.Exit(code=1)
        return
    read_failures = list(getattr(dataset, "failures", []) or [])
    name = getattr(dataset, "name", source)
    for table in summary_tables.featurize_tables(summary, report.failures, read_failures, name):
        print_wide(table)
    if not summary["count"]:
        console.print(f"[bold red]error:[/] nothing could be featurized from {escape(source)}")
        raise typer.Exit(code=1)


def _load_for_featurize(source: str, *, mirror: str | None, disorder: str, timeout: float):  # type: ignore[no-untyped-def]
    from matcard.datasets import load_dataset

    return load_dataset(source, mirror=mirror, disorder=disorder, timeout=timeout)


# === reproduce ===================================================================

reproduce_app = typer.Typer(help="Reproduce published experiments.", no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("synthetic")
def reproduce_synthetic(
    seeds: Annotated[
        str,
        typer.Option(
            help="A count N <= 100 (seeds 2048, 2049, ...), or seeds: a single value > 100 (2048), "
            "a comma list (2048,7 or 7,) or a range (2048-2050).",
        ),
    ] = "3",
    majority: Annotated[float, typer.Option(help="Share of the majority class.")] = 0.5,
    epochs: Annotated[int, typer.Option(help="Training epochs per run.")] = 100,
    losses: Annotated[
        str | None,
        typer.Option(help="Comma list of losses (default: all; see --list-losses)."),
    ] = None,
    protocol: Annotated[str, typer.Option(help="best_over_epochs, validation_selected or both.")] = "both",
    out: Annotated[str, typer.Option(help="Output folder (CSV, JSON, plot; finished runs are reused).")] = (
        "runs/reproduce-synthetic"
    ),
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel worker processes [CPU count]."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary rows as JSON on stdout.")
    ] = False,
    list_losses: Annotated[
        bool, typer.Option("--list-losses", help="List the available losses and exit.")
    ] = False,
) -> None:
    """The reference synthetic experiment (10-class make_classification, MLP, SGD) for every loss."""
    import json

    from rich.table import Table

    from matcard import reproduce
    from matcard.console import make_progress
    from matcard.errors import UsageError

    if list_losses:
        typer.echo("\n".join(reproduce.ALL_LOSSES))
        return
    try:
        chosen_losses = reproduce.ALL_LOSSES
        if losses:
            chosen_losses = tuple(name.strip() for name in losses.split(",") if name.strip())
        if protocol not in (*reproduce.PROTOCOLS, "both"):
            raise UsageError(
                f"--protocol must be best_over_epochs, validation_selected or both, got {protocol!r}"
            )
        protocols = reproduce.PROTOCOLS if protocol == "both" else (protocol,)
        config = reproduce.SyntheticConfig(
            seeds=reproduce.parse_seeds(seeds), majority=majority, epochs=epochs, losses=chosen_losses,
            protocols=protocols,
        )  # fmt: skip
        config.validate()
        trained = {reproduce.DERIVED_LOSSES.get(name, name) for name in config.losses}
        total = len(trained) * len(config.seeds) * len(config.protocols)
        with make_progress() as progress:
            task = progress.add_task("training runs", total=total)

            def advance(spec: str, seed: int, protocol_name: str) -> None:
                progress.update(task, advance=1, description=f"{spec} seed {seed}")

            result = reproduce.run_synthetic(config, out, workers=workers, on_job_done=advance)
    except MatcardError as error:
        raise fail(error) from error

    table = Table(title=f"Synthetic reproduction: seeds {seeds}, majority {majority:g}, {epochs} epochs")
    for column in ("loss", "protocol", "accuracy", "macro-F1", "ROC-AUC", "macro-F1 - CE (paired)", "seeds"):
        table.add_column(column, justify="left" if column in ("loss", "protocol") else "right")
    for row in result.summary:
        cells = [f"{row[m]:.3f} ± {row[m + '_std']:.3f}" for m in ("accuracy", "macro_f1", "roc_auc")]
        paired = row.get("macro_f1_vs_ce")
        cells.append("" if paired is None else f"{paired:+.3f} ± {row['macro_f1_vs_ce_std']:.3f}")
        table.add_row(row["loss"], row["protocol"], *cells, str(row["n_seeds"]))
    print_wide(table, 140, err=json_output)
    print_wide(
        f"{result.elapsed_s:.0f} s ({result.reused_jobs} finished runs reused); "
        f"wrote {escape(', '.join(str(path) for path in result.files.values()))}",
        err=json_output,
    )
    if json_output:
        typer.echo(json.dumps(reproduce.summary_for_json(result.summary), indent=2))


# === train / evaluate ============================================================


@app.command("train")
def train_command(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="YAML config (default: embedded default run).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Registered dataset name or path to structure files.")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Label recipe, e.g. crystal_system, 'band_gap==0'.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Architecture: cgcnn, schnet, alignn, mlp.")] = None,
    featurizer: Annotated[
        str | None,
        typer.Option(help="auto (default for the model), graph, composition or chgnet (vector models)."),
    ] = None,
    loss: Annotated[str | None, typer.Option(help="Loss: ce, magnitude, spread, focal, ldam, ...")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs (early stopping on val macro-F1).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size per device.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for split, initialisation and sampling.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices / processes; > 1 trains with DDP.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any config field: --set optim.lr=1e-3 (repeatable).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard the run already in --out and train it again.")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Run directory (default: runs/<dataset>-<model>-<loss>-<time>)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds allowed to parse one structure file (data.timeout; grows with size)."),
    ] = None,
) -> None:
    """Train a classifier; writes RUN/ (model bundle, metrics.json, history.csv, plots, splits)."""
    from matcard.config import parse_assignment

    overrides: dict = {
        "dataset": dataset,
        "task": task,
        "model": model,
        "featurizer": featurizer,
        "loss": loss,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "devices": devices,
        "accelerator": accelerator,
        "out": out,
        "timeout": timeout,
    }
    try:
        for assignment in set_ or []:
            key, value = parse_assignment(assignment)
            overrides[key] = value
        from matcard.training import train

        result = train(config, resume=resume, overwrite=overwrite, progress=not quiet, **overrides)
    except MatcardError as err:
        raise fail(err) from None
    if not result.is_global_zero:  # a DDP worker process: rank 0 reports
        return
    test = result.metrics["test"]
    for table in metrics_tables(test, "test metrics (argmax)") + decision_tables(
        result.metrics.get("decision"), "test"
    ):
        print_wide(table)
    meta = result.metrics.get("meta", {})
    print_wide(
        f"best epoch {meta.get('best_epoch')} of {meta.get('epochs_run')} (selected on validation macro-F1); "
        f"val macro-F1 {result.metrics['val']['macro_f1'] or 0:.4f}"
        + (f"; {len(result.failures)} item(s) skipped, see failures.csv" if result.failures else "")
    )
    run_dir = escape(result.run_dir)
    print_wide(f"run directory: [bold]{run_dir}[/]  (model: {escape(result.run_dir / 'model')})")
    if result.metrics.get("collapsed"):
        from matcard.collapse import CollapseReport, warning_text

        verdict = CollapseReport(**result.metrics["collapse"])
        console.print(f"[bold yellow]warning:[/] {escape(warning_text(verdict, meta.get('loss', '?')))}")


@app.command("evaluate")
def evaluate_command(
    run_or_model: Annotated[str, typer.Argument(help="A run directory or a model bundle directory.")],
    dataset: Annotated[
        str | None, typer.Option(help="Evaluate on another dataset (use --split all).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, val, test (the run's saved split) or all.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 256,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Metrics of a trained model on its run's split (reproduces metrics.json) or on a dataset."""
    import json

    try:
        from matcard.training import evaluate

        if dataset is not None and split == "test" and not _is_run_dataset(run_or_model, dataset):
            split = "all"
        result = evaluate(
            run_or_model, dataset=dataset, split=split, batch_size=batch_size, progress=not quiet
        )
    except MatcardError as err:
        raise fail(err) from None
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    title = f"{result['split']} metrics (argmax): {result['dataset']}"
    decision = result.get("decision") or {}
    for table in metrics_tables(result["metrics"], title) + decision_tables(
        {**decision, result["split"]: decision}, result["split"]
    ):
        print_wide(table)
    if not decision.get("decision_layer", True):
        console.print("[yellow]no decision layer in this model:[/] argmax only (matcard calibrate fits one)")


@app.command("calibrate")
def calibrate_command(
    run: Annotated[str, typer.Argument(help="A finished training run directory.")],
    objective: Annotated[
        str | None,
        typer.Option(
            help="macro_f1, balanced_accuracy, minority_f1, recall>=R[:class], precision>=P[:class]"
        ),
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Conformal miscoverage: sets cover 1 - alpha.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the decision block as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Refit a run's decision layer (temperature, rule, conformal sets) without retraining."""
    import json

    try:
        from matcard.recalibrate import calibrate_run

        block = calibrate_run(run, objective=objective, alpha=alpha, progress=not quiet)
    except MatcardError as err:
        raise fail(err) from None
    console.print(f"rewrote the decision layer of {escape(run)}/model and metrics.json")
    if json_output:
        typer.echo(json.dumps(block, indent=2))
        return
    for table in decision_tables(block, "test"):
        print_wide(table)


def _is_run_dataset(run_or_model: str, dataset: str) -> bool:
    from pathlib import Path

    from matcard.config import load_config

    for candidate in (Path(run_or_model), Path(run_or_model).parent):
        if (candidate / "config.yaml").is_file():
            return load_config(candidate / "config.yaml").data.dataset == dataset
    return False


# === screen ======================================================================


@app.command("screen")
def screen_command(
    model: Annotated[str, typer.Argument(help="Model bundle (RUN/model) or training run directory.")],
    inputs: Annotated[
        list[str],
        typer.Argument(help="Files, folders, globs, ASE .db, CSV/Parquet with a CIF column, dataset names."),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Results file: .csv or .parquet.")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Structures per prediction batch.")] = 256,
    workers: Annotated[int, typer.Option("--workers", help="Local worker processes.")] = 1,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (tcp://host:port).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted screen.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard an interrupted screen's state and start again.")
    ] = False,
    target_class: Annotated[str | None, typer.Option("--class", help="Class to rank.")] = None,
    min_prob: Annotated[float | None, typer.Option("--min-prob", help="Shortlist only prob >= P.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Shortlist at most K structures.")] = None,
    shortlist: Annotated[
        str | None, typer.Option("--shortlist", help="Shortlist file (default <stem>.shortlist.<ext>).")
    ] = None,
    ase_db: Annotated[
        str | None, typer.Option("--ase-db", help="Also write predictions into this ASE database.")
    ] = None,
    disorder: Annotated[str, typer.Option("--disorder", help="skip | keep | majority")] = "skip",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds allowed to parse one file.")] = 10.0,
    keep_parts: Annotated[bool, typer.Option("--keep-parts", help="Keep shard parts after merging.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    decision: Annotated[
        str | None,
        typer.Option("--decision", help="tuned (the bundle's decision layer; default when present), argmax"),
    ] = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="Add conformal prediction sets covering 1 - alpha.")
    ] = None,
) -> None:
    """Predict every input structure; rank a class; resume after interruption; scale out on Dask."""
    from matcard.screening import screen
    from matcard.screening.report import nothing_predicted, summary_table

    try:
        result = screen(
            model,
            inputs,
            out,
            batch_size=batch_size,
            workers=workers,
            scheduler=scheduler,
            resume=resume,
            overwrite=overwrite,
            target_class=target_class,
            min_prob=min_prob,
            top_k=top_k,
            shortlist=shortlist,
            ase_db=ase_db,
            disorder=disorder,
            timeout=timeout,
            keep_parts=keep_parts,
            decision=decision,
            alpha=alpha,
        )
    except MatcardError as err:
        raise fail(err) from err
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] finished shards are saved; rerun with --resume to continue")
        raise typer.Exit(code=130) from None
    print_wide(summary_table(result), err=json_output)
    if json_output:
        import json

        typer.echo(json.dumps(result.to_dict(), indent=2))
    failed = nothing_predicted(result)
    if failed is not None:  # a screen that predicted nothing is a failed run
        console.print(f"[bold red]error:[/] {failed}")
        raise typer.Exit(code=1)


# === benchmark ===================================================================


@app.command("benchmark")
def benchmark_command(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Study YAML (see configs/benchmarks/).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset of an ad-hoc study (or override).")] = None,
    task: Annotated[str | None, typer.Option(help="Task of an ad-hoc study (or override).")] = None,
    model: Annotated[str | None, typer.Option(help="Architecture: cgcnn, schnet, alignn, mlp.")] = None,
    featurizer: Annotated[
        str | None,
        typer.Option(help="auto (default for the model), graph, composition or chgnet (vector models)."),
    ] = None,
    losses: Annotated[
        str | None,
        typer.Option(
            help="With --config: labels of the entries to run. Without: losses to compare, "
            "e.g. ce,focal,magnitude:mode=add (ce is added as the baseline when missing).",
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="A count (3: the study's first seed and the next ones) or 0,1,2.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs of every cell.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stratified subsample of the dataset.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Shared training setting for every cell: --set optim.lr=1e-3."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="Compare against this entry instead (files get the suffix -vs-LABEL)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Cells trained at once (processes).")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Output folder (default runs/benchmarks/<name>).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary rows as JSON.")] = False,
) -> None:
    """Compare losses on one task over seeds: same split per seed, paired against CE; resumable."""
    import json
    from pathlib import Path

    from matcard import benchmark
    from matcard.config import parse_assignment
    from matcard.console import make_progress

    try:
        study = benchmark.study_from_options(
            config, dataset=dataset, task=task, model=model, losses=losses, seeds=seeds,
            epochs=epochs, limit=limit, baseline=baseline,
            assignments=[parse_assignment(a) for a in set_ or []],
        )  # fmt: skip
        destination = Path(out or f"runs/benchmarks/{study.name}")
        with make_progress() as progress:
            bar = progress.add_task(f"{study.name}: cells", total=None)

            def on_start(total: int, pending: int) -> None:
                progress.update(bar, total=total)
                if total - pending:
                    progress.console.print(f"{total - pending} of {total} cells already finished: reused")

            def on_done(cell: benchmark.Cell, record: dict, reused: bool) -> None:
                progress.update(bar, advance=1, description=f"{study.name}: {cell.label} seed {cell.seed}")
                if not reused:
                    test_f1 = record["test"]["macro_f1"]
                    progress.console.print(
                        f"  {cell.label} seed {cell.seed}: test macro-F1 {test_f1:.3f}, epoch "
                        f"{record['selected_epoch']} of {record['epochs_run']}, {record['seconds']:.0f} s"
                        + (" [yellow](collapsed: constant predictor)[/]" if record.get("collapsed") else "")
                    )

            result = benchmark.run_benchmark(
                study, destination, workers=workers, on_cell_done=on_done, on_start=on_start,
                output_suffix=f"-vs-{baseline}" if baseline else "",
            )  # fmt: skip
    except MatcardError as error:
        raise fail(error) from error
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] finished cells are kept; rerun the same command to continue")
        raise typer.Exit(code=130) from None
    print_wide(benchmark.rich_table(result), 170, err=json_output)
    decision_table = benchmark.decision_rich_table(result)
    if decision_table is not None:
        print_wide(decision_table, 170, err=json_output)
    for line in benchmark.study_description(result):
        print_wide(f"  {escape(line)}", err=json_output)
    print_wide(
        f"{result.trained_cells} cells trained, {result.reused_cells} reused, {result.elapsed_s:.0f} s; "
        f"wrote {escape(', '.join(str(path) for path in result.files.values()))}",
        err=json_output,
    )
    if json_output:
        typer.echo(json.dumps(benchmark.summary_for_json(result), indent=2))


def main() -> None:
    try:
        app()
    except MatcardError as error:  # errors raised outside a command's own handling
        console.print(f"[bold red]error:[/] {escape(error)}")
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
