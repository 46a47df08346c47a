"""pglab.schema, the result contract, against what documents and writes it.

Truths checked:

1. docs/results.md documents exactly the schema: every experiment has a section, every
   table a column table, and the columns listed there are the table's identity, index
   and required columns, no more and no fewer.
2. conf/hydra/default.yaml leaves every non-semantic key (and each of its subkeys a user
   can override) out of job directory names.
3. The apps write what the schema declares: one tiny real run per app stores every
   table with its identity, index and required columns.
4. The schema module is dependency-free: importing it loads no torch, gymnasium,
   numpy or Hydra.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_app

from pglab import schema

DOCS = REPO / "docs" / "results.md"


def documented() -> dict[str, dict[str, set[str]]]:
    """``{experiment: {stem: {column, ...}}}`` from docs/results.md.

    A section ``## <experiment>`` holds, per table, a heading line ``### `<stem>.parquet` ``
    and a markdown table whose first cell lists the row's columns in backticks.
    """
    out: dict[str, dict[str, set[str]]] = {}
    experiment = stem = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            name = re.match(r"## `?([a-z_]+)`?", line)
            experiment = name.group(1) if name else None
            stem = None
            if experiment in schema.EXPERIMENTS:
                out[experiment] = {}
        elif line.startswith("### ") and experiment in out:
            found = re.search(r"`([a-z_]+)\.parquet`", line)
            stem = found.group(1) if found else None
            if stem:
                out[experiment][stem] = set()
        elif line.startswith("|") and stem and experiment in out:
            first = line.split("|")[1]
            if set(first.strip()) <= {"-", " "} or first.strip() == "column":
                continue
            out[experiment][stem].update(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", first))
    return out


def required(experiment: schema.Experiment, table: schema.Table) -> set[str]:
    return {*experiment.identity, *table.index, *table.columns}


def test_docs_document_every_experiment_table_and_column_of_the_schema():
    docs = documented()
    assert set(docs) == set(schema.EXPERIMENTS), "experiments documented vs declared"
    for name, experiment in schema.EXPERIMENTS.items():
        assert set(docs[name]) == {t.stem for t in experiment.tables}, name
        for table in experiment.tables:
            columns = docs[name][table.stem]
            missing = required(experiment, table) - columns
            extra = columns - required(experiment, table)
            assert not missing, f"{name}/{table.stem}: in the schema, not in the docs: {missing}"
            assert not extra, f"{name}/{table.stem}: in the docs, not in the schema: {extra}"


def test_docs_name_the_contract_constants():
    text = DOCS.read_text(encoding="utf-8")
    for name in (schema.METADATA_FILE, schema.JOB_STATUS_FILE, *schema.STATUSES):
        assert f"`{name}`" in text, name
    for key in schema.NON_SEMANTIC_KEYS:
        assert f"`{key}`" in text, key


def test_hydra_dirnames_exclude_every_non_semantic_key():
    """A non-semantic key in a job directory name would make the same job land in two
    directories (e.g. ``threads=2``); its subkeys (``logger.mode``, ``paths.output_dir``)
    are typed as overrides too. (``threads`` is added to the list by the sweep-runtime
    change of issue 9; this test fails until it is there.)"""
    hydra = yaml.safe_load((REPO / "conf" / "hydra" / "default.yaml").read_text())
    exclude = set(hydra["job"]["config"]["override_dirname"]["exclude_keys"])
    for key in schema.NON_SEMANTIC_KEYS:
        assert key in exclude, f"{key} is missing from exclude_keys"
        group = REPO / "conf" / key
        for option in sorted(group.glob("*.yaml")) if group.is_dir() else []:
            for sub in (yaml.safe_load(option.read_text()) or {}).keys():
                assert f"{key}.{sub}" in exclude, f"{key}.{sub} ({option.name}) not excluded"


def test_schema_module_is_dependency_free():
    code = (
        "import sys, pglab.schema\n"
        "heavy = ('torch', 'gymnasium', 'numpy', 'pandas', 'hydra', 'omegaconf')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_env_slug():
    assert schema.env_slug("CartPole-v1") == "cartpole"
    assert schema.env_slug("Acrobot-v1") == "acrobot"
    assert schema.env_slug("ALE/Pong-v5") == "ale-pong"


TINY_RUNS = {
    "estimator_variance": (
        "estimator_variance.py",
        "mdp=two_state",
        "estimator=reinforce",
        "n_trajectories=[1,2]",
        "n_repetitions=4",
    ),
    "calibration": (
        "calibration.py",
        "mdp=two_state",
        "estimator=reinforce",
        "n_trajectories=[2]",
        "n_studies=2",
        "n_repetitions=20",
        "n_resamples=100",
    ),
    "cartpole": (
        "cartpole.py",
        "n_trajectories=1",
        "budget.iterations=2",
        "gradient_quality.enabled=true",
        "gradient_quality.reference_episodes=10",
        "gradient_quality.n_batches=2",
        "gradient_quality.batch_sizes=[1]",
        "gradient_quality.checkpoints=[0]",
    ),
    "tabular_ascent": (
        "tabular_ascent.py",
        "gradient=reinforce",
        "n_trajectories=2",
        "n_iterations=3",
    ),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, dict[str, pd.DataFrame]]:
    """One tiny real run of every app: ``{experiment: {stem: table}}``."""
    out = {}
    for name, (script, *overrides) in TINY_RUNS.items():
        root = tmp_path_factory.mktemp(name)
        run_app(script, *overrides, "logger=none", "progress=false", f"paths.output_dir={root}")
        out[name] = {p.stem: pd.read_parquet(p) for p in sorted(root.rglob("*.parquet"))}
    return out


@pytest.mark.parametrize("name", sorted(schema.EXPERIMENTS))
def test_apps_write_the_declared_tables_and_columns(written, name):
    experiment = schema.experiment(name)
    tables = written[name]
    assert set(tables) == {t.stem for t in experiment.tables}, name
    for table in experiment.tables:
        frame = tables[table.stem]
        missing = required(experiment, table) - set(frame.columns)
        assert not missing, f"{name}/{table.stem} lacks {sorted(missing)}"
        assert len(frame) > 0
        if not table.index:
            assert len(frame) == 1, f"{name}/{table.stem} is one row per run"
        else:  # identity + index name each row
            assert not frame.duplicated(list(experiment.sort_keys(table.stem))).any()


def test_gradient_quality_n_trajectories_is_the_training_n(written):
    """Every table's n_trajectories is the run's training N; the batch N is its own column."""
    quality = written["cartpole"]["gradient_quality"]
    assert set(quality["n_trajectories"]) == {1}
    assert "batch_n_trajectories" in quality.columns
    assert "train_n_trajectories" not in quality.columns
