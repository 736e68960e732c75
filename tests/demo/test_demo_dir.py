"""`laion-hf demo --out DIR` never wipes a folder it did not write (issue 11, item 2)."""

import os

from laion_hf.cli import main
from laion_hf.demo import DEMO_MARKER, prepare_demo_dir


def test_demo_refuses_a_non_empty_folder_that_is_not_a_demo_output(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(project), "--rows", "50"]) == 1
    err = capsys.readouterr().err
    assert "is not empty and is not a previous demo output" in err and "Traceback" not in err
    assert (project / "notes.txt").read_text() == "keep me"
    assert (project / "src" / "main.py").read_text() == "print('mine')"
    assert not (project / DEMO_MARKER).exists()


def test_demo_out_dot_in_a_project_folder_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "README.md").write_text("my project")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ".", "--rows", "50"]) == 1
    assert "not a previous demo output" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["README.md"]


def test_a_previous_demo_output_is_cleared_and_an_empty_folder_used(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_demo_dir(str(empty))
    assert sorted(os.listdir(empty)) == [DEMO_MARKER]
    (empty / "metadata").mkdir()
    (empty / "metadata" / "part-00000.parquet").write_bytes(b"old run")
    prepare_demo_dir(str(empty))
    assert sorted(os.listdir(empty)) == [DEMO_MARKER]  # the old run's files are gone


def test_demo_output_below_a_file_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "f" / "demo"), "--rows", "50"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
