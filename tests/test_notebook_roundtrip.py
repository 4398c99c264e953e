"""Issue 23 §1.5: opening a notebook in JupyterLab must not mark it modified, and saving it must not change it.

Two things made JupyterLab mark a stored notebook modified the moment it opened it (measured with JupyterLab 4.6 in
headless Chromium: the notebook's tab carried ``jp-mod-dirty``):

- the notebook's ``kernelspec`` and ``language_info`` metadata differed from what the kernel reports: JupyterLab
  writes the kernel's ``kernelspec`` (``display_name`` "Python 3 (ipykernel)", not "Python 3") as the session starts,
  and the kernel's full ``language_info`` (codemirror_mode, version, ...; not just ``name``) once it is idle, and
  either change dirties the notebook. Every notebook had this.
- notebook 04 was not in the form ``nbformat.writes`` saves (four cells had ``"id"`` after ``"source"``; nbformat
  sorts the keys), so a save (JupyterLab's, ``jupyter nbconvert --inplace``) rewrote it.

So each stored notebook is byte-identical to its nbformat round trip (outputs stripped, cell ids kept) and carries
the metadata the project's kernel reports (ipykernel's ``python3`` kernelspec and ``language_info``; the version is
the interpreter of requirements.lock, CPython 3.11.7: a kernel on another Python dirties it when it connects).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 9


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_load_and_save_leaves_the_notebook_byte_identical(path):
    raw = path.read_bytes()
    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    text = nbformat.writes(nb, version=4)
    written = (text if text.endswith("\n") else text + "\n").encode("utf-8")   # as nbformat.write saves it
    assert written == raw, f"{path.name}: an nbformat load + save changes the file (JupyterLab rewrites it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_an_id_and_no_output(path):
    nb = nbformat.read(path, as_version=4)
    assert (nb.nbformat, nb.nbformat_minor) >= (4, 5), "cell ids need nbformat 4.5"
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: missing or repeated cell ids {ids}"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{path.name} [{c.id}]: stored with outputs"
    nbformat.validate(nb)


def test_the_notebooks_carry_the_kernel_metadata_jupyterlab_would_write():
    ipykernel = pytest.importorskip("ipykernel.ipkernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 kernelspec installed")
    kernel_info = dict(ipykernel.IPythonKernel.language_info)
    metadata = {p.name: nbformat.read(p, as_version=4).metadata for p in NOTEBOOKS}
    for name, md in metadata.items():
        assert md.get("kernelspec") == {"display_name": spec.display_name, "language": spec.language,
                                        "name": "python3"}, name
        info = dict(md.get("language_info") or {})
        assert set(info) == set(kernel_info), f"{name}: language_info keys {sorted(info)}"
        assert {k: v for k, v in info.items() if k != "version"} == \
               {k: v for k, v in kernel_info.items() if k != "version"}, name
    versions = {md["language_info"]["version"] for md in metadata.values()}
    assert len(versions) == 1, f"the notebooks name different Python versions: {versions}"
