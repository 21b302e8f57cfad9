"""Static checks of the container image definition: the rules the image must keep hold (hadolint on it:
tests/integration/test_dockerfiles_hadolint.py).

One Dockerfile builds both variants (VARIANT=gpu|cpu); building it needs a registry and minutes of CPU, so that is the
rehearsal's job, not these tests'.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
SECRET_FILE = re.compile(r"(^|/)(\.ssh|id_rsa|id_ed25519|\.netrc|\.docker|\.git-credentials)|\.(pem|p12|key)$"
                         r"|credentials|service[-_]?account.*\.json$", re.I)
SECRET_TEXT = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\"type\":\s*\"service_account\"")


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int
    comments: list[str]  # the comment lines right above it


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) with continuation lines joined; comments inside a continuation are dropped."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    comments: list[str] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line, start = lines[i].strip(), i + 1
        i += 1
        if not line:
            comments = []
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            line = line[:-1] + ("" if nxt.startswith("#") else " " + nxt)
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip(), start, comments)
        comments = []
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name, []))
        elif not stages and instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def instructions(stage: Stage, keyword: str) -> list[Instruction]:
    return [x for x in stage.instructions if x.keyword == keyword]


def stage_args(stage: Stage) -> dict[str, str]:
    return dict(x.value.partition("=")[::2] for x in instructions(stage, "ARG"))


@pytest.fixture(scope="module", params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> tuple[Path, dict[str, str], list[Stage]]:
    return (request.param, *parse(request.param))


def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_the_image_has_one_dockerfile_for_both_variants():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile"]
    _, stages = parse(DOCKERFILES[0])
    build = next(s for s in stages if s.name == "build")
    assert stage_args(build)["VARIANT"] == "gpu", "the default build is the GPU image"
    install = " ".join(x.value for x in instructions(build, "RUN"))
    assert "tensorflow[and-cuda]==${TF_VERSION}" in install and "tensorflow-cpu==${TF_VERSION}" in install


def test_every_lint_exception_says_why(dockerfile):
    path, _, _ = dockerfile
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            above = lines[number - 1] if number else ""
            assert above.startswith("#") and "hadolint" not in above, f"{path.name}:{number + 1}: give the reason above"


def test_base_images_are_pinned(dockerfile):
    path, global_args, stages = dockerfile
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), stage.base)
        repository, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (repository and re.fullmatch(r"[\w.-]*\d[\w.-]*", tag) and tag != "latest"), \
            f"{path.name}: base image {image} needs a version tag"


def test_runs_as_a_numeric_non_root_user(dockerfile):
    path, _, stages = dockerfile
    users = instructions(final(stages), "USER")
    assert users, f"{path.name}: the final stage must switch to a non-root USER"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0, "numeric uid:gid, so runAsNonRoot can check it"
    created = " ".join(x.value for x in instructions(final(stages), "RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created, "the user the image runs as must exist"
    after_user = final(stages).instructions[final(stages).instructions.index(users[-1]):]
    assert not [x for x in after_user if x.keyword == "RUN"], "nothing may run as root after USER"


def test_entrypoint_runs_the_job_package_from_the_venv(dockerfile):
    path, _, stages = dockerfile
    entrypoint = instructions(final(stages), "ENTRYPOINT")
    assert [json.loads(x.value) for x in entrypoint] == [["python", "-m", "job"]], path.name
    env = " ".join(x.value for x in instructions(final(stages), "ENV"))
    assert re.search(r"\bPATH=/opt/venv/bin:\$PATH\b", env), "`python` must be the venv's, which has the package"
    assert any(x.value == "--from=build /opt/venv /opt/venv" for x in instructions(final(stages), "COPY"))
    build = " ".join(x.value for s in stages for x in instructions(s, "RUN"))
    assert "pip install --no-cache-dir --no-deps /tmp/build/src" in build and "python -m job presets" in build


def pip_installs(run: str) -> list[list[str]]:
    """The arguments of every `pip install` in a RUN command line."""
    found = []
    for command in re.split(r"&&|;|\|\|", run):
        if "pip install" not in command:
            continue
        words = shlex.split(command)
        start = next(i for i in range(len(words) - 1) if words[i] in ("pip", "pip3") and words[i + 1] == "install")
        found.append(words[start + 2:])
    return found


def test_python_packages_are_pinned(dockerfile):
    path, _, stages = dockerfile
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        assert not spec or re.fullmatch(r"[\w.\-\[\]]+==[\w.]+", spec), f"requirements.txt: {spec} is not pinned"
    for stage in stages:
        for run in instructions(stage, "RUN"):
            for words in pip_installs(run.value):
                where = f"{path.name}:{run.line}"
                packages = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] != "-r"]
                requirement_files = [words[i + 1] for i, w in enumerate(words) if w == "-r"]
                assert packages or requirement_files, f"{where}: pip install of nothing"
                assert all(f.endswith("/requirements.txt") for f in requirement_files), where
                for word in packages:
                    if word.startswith("/"):  # the project's own source tree
                        continue
                    if word.startswith("$"):  # a variable: every value it is given in this RUN must be pinned
                        values = re.findall(rf'\b{word.strip("${}")}="([^"]+)"', run.value)
                        assert values and all("==" in v for v in values), f"{where}: {word} is not pinned"
                    else:
                        assert "==" in word, f"{where}: pip install {word} is not pinned"


def test_tensorflow_version_matches_the_tested_one(dockerfile):
    path, _, stages = dockerfile
    build = next(s for s in stages if s.name == "build")
    image_version = stage_args(build)["TF_VERSION"]
    tested = {importlib.metadata.version(d) for d in ("tensorflow-cpu", "tensorflow") if _installed(d)}
    assert tested == {image_version}, f"{path.name} installs TF {image_version}, the tests run {tested}"
    makefile = (ROOT / "Makefile").read_text()
    assert set(re.findall(r"tensorflow(?:-cpu|\[and-cuda\])==([\d.]+)", makefile)) <= {image_version}


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_horovod_is_built_by_the_project_script_with_nccl_on_gpu(dockerfile):
    path, _, stages = dockerfile
    build = next(s for s in stages if s.name == "build")
    assert any(x.value == "docker/build-horovod.sh /tmp/build/build-horovod.sh" for x in instructions(build, "COPY"))
    (run,) = [x for x in instructions(build, "RUN") if "build-horovod.sh" in x.value]
    assert "bash /tmp/build/build-horovod.sh --python /opt/venv/bin/python" in run.value
    gpu_branch = re.search(r'if \[ "\$VARIANT" = gpu \]; then(.*?)fi', run.value).group(1)
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in gpu_branch and "HOROVOD_BUILD_GPU=1" in gpu_branch
    # mpirun-launched jobs (MPIJob) need Horovod's MPI support: Open MPI must be there when it builds, and at run time.
    packages = " ".join(x.value for x in instructions(build, "RUN") if "apt-get install" in x.value)
    assert "libopenmpi-dev" in packages and "cmake" in packages
    runtime = " ".join(x.value for x in instructions(final(stages), "RUN") if "apt-get install" in x.value)
    for package in ("openmpi-bin", "openssh-client", "openssh-server"):
        assert package in runtime, f"{path.name}: MPIJob launchers and workers need {package}"


def test_the_gpu_build_reaches_only_the_debian_and_pypi_archives(dockerfile):
    # Builders and CI reach package archives, not vendor sites: apt-get and pip go through the configured mirrors.
    path, _, stages = dockerfile
    build = next(s for s in stages if s.name == "build")
    runs = " ".join(x.value for s in stages for x in instructions(s, "RUN"))
    commands = [c.split()[0] for c in re.split(r"&&|;|\|\||\(|\bthen\b|\bdo\b", runs) if c.split()]
    assert not {"curl", "wget"} & set(commands) and "nvidia.com" not in runs, f"{path.name}: a download off-archive"
    # Horovod's CMake takes nvcc from $HOROVOD_CUDA_HOME/bin: the GPU step must have put one there.
    (toolkit,) = [x for x in instructions(build, "RUN") if "nvidia-cuda-toolkit" in x.value]
    (horovod,) = [x for x in instructions(build, "RUN") if "build-horovod.sh" in x.value]
    cuda_home = re.search(r"HOROVOD_CUDA_HOME=(\S+)", horovod.value).group(1)
    assert f"{cuda_home}/bin/" in toolkit.value and toolkit.line < horovod.line


def test_no_credentials_in_the_image(dockerfile):
    path, global_args, stages = dockerfile
    for stage in stages:
        for x in instructions(stage, "ENV") + instructions(stage, "ARG") + instructions(stage, "LABEL"):
            for name in re.findall(r"(\w+)=", x.value) or [x.value.split("=")[0]]:
                assert not SECRET_NAME.search(name), f"{path.name}:{x.line}: {name} looks like a credential"
        env = " ".join(x.value for x in instructions(stage, "ENV"))
        assert "PIP_" not in env and "GOOGLE_APPLICATION_CREDENTIALS" not in env, "index settings stay build args"
        for x in instructions(stage, "COPY") + instructions(stage, "ADD"):
            sources = [w for w in x.value.split()[:-1] if not w.startswith("--")]
            assert not [s for s in sources if SECRET_FILE.search(s)], f"{path.name}:{x.line}: copies a credential"
    # openssh-server's install makes host keys; one baked into the image would be shared by every container.
    runtime_install = next(x.value for x in instructions(final(stages), "RUN") if "openssh-server" in x.value)
    assert "rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*" in runtime_install


def dockerignore_allows(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers everything in it."""
    parts = relpath.split("/")
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


def build_context_files(dockerfile_path: Path) -> list[str]:
    ignore = dockerfile_path.with_name(dockerfile_path.name + ".dockerignore")
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", "runs", "data", "__pycache__", ".pytest_cache"}]
        files += [(Path(folder) / n).relative_to(ROOT).as_posix() for n in names]
    return [f for f in files if dockerignore_allows(f, patterns)]


def test_build_context_holds_what_copy_needs_and_no_secrets(dockerfile):
    path, _, stages = dockerfile
    context = build_context_files(path)
    for stage in stages:
        for x in instructions(stage, "COPY"):
            if x.value.startswith("--from="):
                continue
            for source in x.value.split()[:-1]:
                assert (ROOT / source).exists(), f"{path.name}:{x.line}: COPY {source}: no such file"
                assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), \
                    f"{path.name}:{x.line}: {source} is not in the build context ({path.name}.dockerignore)"
    assert "setup.py" in context and not [f for f in context if f.startswith(("tests/", "k8s/", ".ci/"))]
    for relpath in context:
        assert not SECRET_FILE.search(relpath), f"{relpath} would be sent to the build"
        text = (ROOT / relpath).read_text(errors="replace")
        assert not SECRET_TEXT.search(text), f"{relpath} holds a private key or a service account key"


def test_dockerignore_rule_follows_docker():
    patterns = ["*", "!job/", "!docker/build-horovod.sh", "**/__pycache__"]
    assert dockerignore_allows("job/cli.py", patterns)
    assert dockerignore_allows("docker/build-horovod.sh", patterns)
    assert not dockerignore_allows("docker/Dockerfile", patterns)
    assert not dockerignore_allows("job/__pycache__/cli.cpython-311.pyc", patterns)
    assert not dockerignore_allows("tests/integration/test_k8s.py", patterns)
