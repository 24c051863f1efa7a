"""delete_results.sh asks before deleting, and -y deletes without asking."""

import shutil
import subprocess

from conftest import ROOT


def project_copy(tmp_path):
    shutil.copy(ROOT / "delete_results.sh", tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / ".gitkeep").write_text("")
    (tmp_path / "results" / "model_0.500000_abcde.txt.json").write_text("{}")
    (tmp_path / "results" / "failed_fghij.txt.json").write_text("{}")
    (tmp_path / "TensorBoard" / "model_0.500000_abcde").mkdir(parents=True)
    (tmp_path / "layers").mkdir()
    (tmp_path / "results" / "models").mkdir()  # --keep-models
    (tmp_path / "results" / "models" / "model_0.500000_abcde.keras").write_text("x")
    (tmp_path / "results" / "models" / "model_0.500000_abcde.json").write_text("{}")
    (tmp_path / "results" / "results.csv").write_text("x")
    (tmp_path / "results" / "optimization_history.png").write_text("x")
    for name in ("results.pkl", "model_demo.png", "model_best.png", "README.md"):
        (tmp_path / name).write_text("x")
    return tmp_path


def test_answering_no_keeps_everything(tmp_path):
    project = project_copy(tmp_path)
    done = subprocess.run(["bash", "delete_results.sh"], cwd=project, input="n\n",
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Nothing deleted" in done.stdout
    assert (project / "results.pkl").exists()
    assert (project / "results" / "model_0.500000_abcde.txt.json").exists()


def test_yes_flag_deletes_results_pickle_plots_and_logs_only(tmp_path):
    project = project_copy(tmp_path)
    done = subprocess.run(["bash", "delete_results.sh", "-y"], cwd=project,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (project / "results").iterdir()) == [".gitkeep"]
    for name in ("results.pkl", "model_demo.png", "model_best.png", "TensorBoard", "layers"):
        assert not (project / name).exists()
    assert (project / "README.md").exists() and (project / "delete_results.sh").exists()
