"""notebooks/recross_colab.ipynb: stored valid and without outputs, its parameter cell names only
gin files and bindings that exist (fast), and it runs end to end headless with its CPU preset,
ending with the result table and the retrieval heatmap (slow)."""
import json
import os
import time

import gin
import pytest

from recross_jax import gin_utils

NOTEBOOK = os.path.join(gin_utils.REPO_ROOT, "notebooks", "recross_colab.ipynb")
# Stages that read the corpus, so take the preset's `data` overrides (pipeline.py's `data` flags).
DATA_STAGES = ("upstream", "index", "mine", "generalize")


def load_notebook() -> dict:
    with open(NOTEBOOK, encoding="utf-8") as f:
        return json.load(f)


def parameter_cell_index(notebook: dict) -> int:
    tagged = [i for i, cell in enumerate(notebook["cells"])
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell is tagged `parameters`"
    return tagged[0]


def parameters() -> dict:
    """The names the parameter cell defines (it is plain data: no imports, no calls)."""
    notebook = load_notebook()
    namespace: dict = {}
    exec("".join(notebook["cells"][parameter_cell_index(notebook)]["source"]), namespace)  # noqa: S102
    return namespace


def test_the_notebook_is_valid_json_and_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = load_notebook()  # valid JSON
    nbformat.validate(nbformat.from_dict(notebook))
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and parameter_cell_index(notebook) < notebook["cells"].index(code[1])
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:3]
    # Every code cell is introduced by a markdown cell saying what it does.
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert i > 0 and notebook["cells"][i - 1]["cell_type"] == "markdown"


@pytest.mark.parametrize("preset", ["cpu", "tpu"])
def test_the_parameter_cell_names_only_gin_files_and_bindings_that_exist(preset):
    params = parameters()
    assert params["PRESET"] in ("auto", "cpu", "tpu")
    gin_files, chosen = params["GIN_FILES"], params["PRESETS"][preset]
    assert set(chosen["gin"]) == set(gin_files) | {"data"}
    assert set(chosen["gin_files"]) <= set(gin_files)
    for stage, files in gin_files.items():
        files = files + chosen["gin_files"].get(stage, [])
        bindings = dict(chosen["gin"][stage])
        if stage in DATA_STAGES:
            bindings.update(chosen["gin"]["data"])
        # A macro must be one the stage's gin files define (binding a new one would do nothing).
        gin_utils.parse(files, [], finalize=False)
        for key in bindings:
            if "." not in key:
                try:
                    gin.query_parameter(f"%{key}")
                except ValueError:
                    pytest.fail(f"{preset} preset, {stage}: {key} is no macro of {files}")
        # A configurable parameter must exist: gin refuses an unknown configurable or parameter.
        gin_utils.parse(files, [f"{key} = {value!r}" for key, value in bindings.items()],
                        finalize=False)
        for key, value in bindings.items():
            assert gin.query_parameter(f"%{key}" if "." not in key else key) == value


def test_the_cpu_preset_stays_small():
    cpu = parameters()["PRESETS"]["cpu"]["gin"]
    assert cpu["upstream"]["TRAIN_STEPS"] <= 100
    assert cpu["data"]["tasks.recross.upstream_cap.cap"] <= 50
    assert cpu["generalize"]["NUM_QUERY_SETS"] == 1


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_with_the_cpu_preset(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # What a user does in the parameter cell: the CPU preset, outputs under tmp_path.
    notebook.cells.insert(parameter_cell_index(notebook) + 1, nbformat.v4.new_code_cell(
        f'PRESET = "cpu"\nWORK_DIR = {str(tmp_path / "run")!r}'))
    # One CPU device, as on a CPU runtime (conftest simulates 8 for the other tests).
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    start = time.perf_counter()
    client = nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, str(tmp_path / "executed.ipynb"))
    print(f"notebook ran in {time.perf_counter() - start:.0f} s ({tmp_path / 'executed.ipynb'})")
    outputs = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"][-1]
    shown = [output.get("data", {}) for output in outputs if output.output_type == "display_data"]
    assert [sorted(data) for data in shown][-2:] == [["text/markdown", "text/plain"],
                                                      ["image/png", "text/plain"]]
    table = shown[-2]["text/markdown"]
    assert "super_glue_cb" in table and table.count("|") > 4
    assert len(shown[-1]["image/png"]) > 1000  # base64 of a PNG
    assert (tmp_path / "run" / "report" / "retrieval_heatmap.png").exists()
