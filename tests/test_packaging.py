"""odiag installed from its sdist and wheel, run from outside the checkout: tasks, teachers, licence, provenance."""

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """An sdist built from the checkout, a wheel built from that sdist, the wheel installed into a folder
    inside a git repository of someone else's project."""
    tmp = tmp_path_factory.mktemp("packaging")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp / "sdist")], cwd=ROOT, check=True,
                   capture_output=True)
    sdist = next((tmp / "sdist").glob("odiag-*.tar.gz"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheel"),
                    str(sdist)], check=True, capture_output=True)
    wheel = next((tmp / "wheel").glob("odiag-*.whl"))
    project = tmp / "their-project"
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty",
                    "-m", "theirs"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(project / "deps"), str(wheel)],
                   check=True, capture_output=True)
    return sdist, wheel, project


def _odiag(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project / "deps")}
    code = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_sdist_and_the_wheel_carry_every_task_teacher_and_the_licence(installed):
    sdist, wheel, _ = installed
    tasks = sorted(p.name for p in (ROOT / "tasks").iterdir() if p.suffix in (".yaml", ".py"))
    teachers = sorted(p.name for p in (ROOT / "teachers").glob("*.yaml"))
    assert "odiag_toy.yaml" in tasks and "odiag_utils.py" in tasks and "toy-teacher.yaml" in teachers
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {f"tasks/{t}" for t in tasks} | {f"teachers/{t}" for t in teachers} | {"LICENSE", "setup.py"} <= names
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"harness/_bundled/tasks/{t}" for t in tasks} | {f"harness/_bundled/teachers/{t}" for t in teachers} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"harness/toy_models/teacher/config.json", "harness/demo.yaml"} <= names


def test_an_installed_odiag_lists_and_runs_its_own_tasks_and_teachers(installed):
    _, _, project = installed
    listed = _odiag(project, "ls", "teachers")
    assert listed.returncode == 0 and "toy-teacher" in listed.stdout and "synthetic-helpful" in listed.stdout, listed
    tasks = _odiag(project, "ls", "tasks")
    assert tasks.returncode == 0 and "odiag_boolq" in tasks.stdout and "odiag_toy" in tasks.stdout, tasks
    where = _odiag(project, "tasks-dir")
    assert Path(where.stdout.strip()) == project / "deps" / "harness" / "_bundled" / "tasks", where
    env = {**os.environ, "PYTHONPATH": str(project / "deps")}
    model = subprocess.run([sys.executable, "-c", "import harness; from harness.teachers import load_teacher; "
                            "print(harness.__file__); print(load_teacher('toy-teacher').model)"],
                           cwd=project, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert model == [str(project / "deps" / "harness" / "__init__.py"), str(project / "deps" / "harness" / "toy_models" / "teacher")]


def test_an_installed_odiag_records_no_commit_of_the_repository_around_it(installed):
    _, _, project = installed
    done = _odiag(project, "run", "--set", "limit=1", "--set", "n_target=20", "--out", "run", "-q")
    assert done.returncode == 0, done.stderr
    results = json.loads((project / "run" / "results.json").read_text())
    assert results["versions"]["git_commit"] is None  # not their project's HEAD
    assert results["versions"]["odiag"]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout (an unpacked sdist)")
def test_a_checkout_records_its_own_commit():
    from harness.config import checkout_commit

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert checkout_commit() == head
