"""The `steerlens` command: every subcommand and its --help, the console entry point, one-line errors
with exit code 2 (a traceback only with --debug), the export wiring, old flag spellings, the
scripts/ wrappers, and one real run on the tiny model."""

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from steerlens import cli
from steerlens.commands import COMMANDS, SCRIPTS
from steerlens.commands.common import parse_features
from steerlens.errors import UsageError, is_input_error, one_line

ROOT = Path(__file__).resolve().parents[1]
ISSUE_COMMANDS = {"train", "eval", "find", "dashboards", "clamp", "compare", "axis", "cap", "export", "demo"}
EXPORTS = ["control-vector", "neuronpedia", "axis"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one stderr line of a failed command (and nothing else on stderr)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("steerlens: error: ") and "Traceback" not in err
    return lines[0].removeprefix("steerlens: error: ")


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and ISSUE_COMMANDS <= set(COMMANDS)
    flat = " ".join(out.split())  # argparse wraps long help lines
    for name, (_, summary) in COMMANDS.items():
        assert f" {name} {summary}" in flat, name


def test_top_level_help_does_not_load_torch():
    code = "import sys; from steerlens.cli import main; main(['--help']); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("argv", [[c] for c in COMMANDS] + [["export", e] for e in EXPORTS], ids=" ".join)
def test_every_command_has_help(argv, capsys):
    code, out, _ = run_cli(capsys, *argv, "--help")
    assert code == 0 and out.startswith(f"usage: steerlens {' '.join(argv)}")
    assert "--debug" in out


def test_export_help_lists_formats(capsys):
    _, out, _ = run_cli(capsys, "export", "--help")
    assert all(e in out for e in EXPORTS) and "steerlens export control-vector RECIPE.json OUT.gguf" in out


def test_console_entry_point_is_declared_and_installed():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["steerlens"] == "steerlens.cli:main"
    assert "steerlens*" in meta["tool"]["setuptools"]["packages"]["find"]["include"]
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="steerlens")
    assert ep.value == "steerlens.cli:main" and ep.load() is cli.main
    exe = Path(sys.executable).parent / "steerlens"
    res = subprocess.run([str(exe), "trian"], capture_output=True, text=True)
    assert res.returncode == 2 and error_line(res.stderr).startswith("argument COMMAND: invalid choice: 'trian'")
    res = subprocess.run([sys.executable, "-m", "steerlens", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("usage: steerlens")


def test_unknown_recipe_is_one_line_without_repr_quotes(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--recipe", "nope", "--out", tmp_path / "sae")
    msg = error_line(err)
    assert code == 2 and msg.startswith("Unknown recipe 'nope': give one of [") and "smollm2-default" in msg
    assert not (tmp_path / "sae").exists()


def test_debug_shows_the_traceback(capsys, tmp_path):
    for argv in (["--debug", "train", "--recipe", "nope"], ["train", "--recipe", "nope", "--debug"]):
        code, _, err = run_cli(capsys, *argv, "--out", tmp_path)
        assert code == 2 and "Traceback (most recent call last)" in err and "KeyError" in err
        assert err.strip().splitlines()[-1].startswith("steerlens: error: Unknown recipe 'nope'")


def test_missing_sae_dir(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", tmp_path / "nosae")
    msg = error_line(err)
    assert code == 2 and "nosae is not an SAE directory" in msg and "cfg.json" in msg


def test_bad_band_and_bad_flags(capsys, tmp_path):
    code, _, err = run_cli(capsys, "cap", "--axis", tmp_path, "--bands", "21..26")
    assert code == 2 and error_line(err) == "--bands: Band '21..26': write 'START-END' (inclusive), 'L1,L2,...' or 'auto'."
    code, _, err = run_cli(capsys, "cap", "--axis", tmp_path, "--windows", "-1")
    assert code == 2 and error_line(err).startswith("--windows/--gains: ")
    code, _, err = run_cli(capsys, "clamp", "--batch-size", "many")
    assert code == 2 and error_line(err) == ("argument --batch-size: invalid int value: 'many' "
                                             "(see `steerlens clamp --help`)")
    code, _, err = run_cli(capsys, "clamp", "--sae", tmp_path / "missing")
    assert code == 2 and error_line(err).startswith(f"No trained SAE at {tmp_path / 'missing'}")
    code, _, err = run_cli(capsys, "dashboards", "--out", tmp_path, "--features", "3", "x-9")
    assert code == 2 and "--features: 'x-9' is not a latent id or range" in error_line(err)


def test_no_command_and_unknown_command(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and "no command given" in error_line(err)
    code, _, err = run_cli(capsys, "trian")
    assert code == 2 and "invalid choice: 'trian'" in error_line(err)
    code, _, err = run_cli(capsys, "export")
    assert code == 2 and "say what to export: one of control-vector, neuronpedia, axis" in error_line(err)
    code, _, err = run_cli(capsys, "export", "axis", "a", "b", "--format", "yaml")
    assert code == 2 and "argument --format: invalid choice: 'yaml'" in error_line(err)


def test_bugs_keep_their_traceback(monkeypatch):
    """Only input errors become one line: a RuntimeError, or a module of ours failing to import, propagates."""
    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.command_module("layer-scan"), "run", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["layer-scan"])
    assert not is_input_error(ModuleNotFoundError("No module named 'steering.nope'", name="steering.nope"))
    missing = ModuleNotFoundError("No module named 'nbclient'", name="nbclient")
    assert is_input_error(missing)
    assert one_line(missing) == "No module named 'nbclient'; install it with `pip install steerlens[dev]`"
    assert one_line(KeyError("Unknown key 'x'")) == "Unknown key 'x'"
    assert one_line(ValueError("two\n  lines")) == "two lines" and one_line(ValueError()) == "ValueError"


def test_parse_features():
    assert parse_features(["0-2,5", "9"]) == [0, 1, 2, 5, 9] and parse_features("7") == [7]
    assert parse_features(None) is None
    with pytest.raises(UsageError, match="'1-b' is not a latent id"):
        parse_features(["1-b"])


def parsed(*argv):
    ap, _ = cli.build_parser(argv[0])
    return ap.parse_args(list(argv))


def test_old_flag_spellings_still_parse():
    a = parsed("compare", "--mode", "disabled", "--project", "p")
    b = parsed("compare", "--wandb", "disabled", "--wandb-project", "p")
    assert (a.wandb, a.wandb_project) == (b.wandb, b.wandb_project) == ("disabled", "p")
    assert parsed("compare", "--no-wandb").wandb == "disabled" and parsed("compare").wandb == "offline"
    assert parsed("layer-scan", "--questions", "2").questions == parsed("layer-scan", "--n-questions", "2").questions == 2
    assert parsed("demo", "--context", "16").context == parsed("demo", "--context-size", "16").context == 16
    assert parsed("dashboards", "--out", "o", "--exclude-first", "false").exclude_first is False
    required = {"eval": ["sae"], "dashboards": ["--out", "o"], "cap": ["--axis", "a"], "find": ["--concept", "c"]}
    for cmd in ("find", "dashboards", "clamp", "compare", "axis", "cap", "eval", "layer-scan", "corpus"):
        args = parsed(cmd, *required.get(cmd, []), "--model", "tiny", "--device", "cpu")
        assert (args.model, args.device) == ("tiny", "cpu"), cmd


@pytest.fixture
def recipe(tmp_path):
    import steering

    add = steering.Add("blocks.2.hook_resid_post", torch.randn(64, generator=torch.Generator().manual_seed(1)),
                       alpha=2.0)
    path = tmp_path / "gg.json"
    path.write_text(json.dumps(add.to_dict()))
    return add, path


def test_export_control_vector(tiny, recipe, monkeypatch, capsys, tmp_path):
    import gguf

    from steering.control_vector import read_control_vector

    add, path = recipe
    out = tmp_path / "gg.gguf"
    code, stdout, err = run_cli(capsys, "export", "control-vector", path, out, "--model", "tiny")
    assert code == 0, err
    assert json.loads(stdout.splitlines()[-1]) == {"wrote": str(out)}
    (back,) = read_control_vector(out, model=tiny).interventions
    assert back.hook == add.hook
    torch.testing.assert_close(back.vector * back.alpha, add.vector * add.alpha)
    fields = gguf.GGUFReader(str(out)).fields
    assert bytes(fields["controlvector.model_hint"].parts[-1]).decode() == "llama"  # the tiny model is a Llama
    # an existing target is refused before anything loads; with --model-hint and --n-layers nothing loads at all
    code, _, err = run_cli(capsys, "export", "control-vector", path, out, "--model", "tiny")
    assert code == 2 and error_line(err) == f"{out} already exists; choose another path or pass --overwrite to replace it."

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("lm.model.load_model", no_model)
    code, _, err = run_cli(capsys, "export", "control-vector", path, out, "--model-hint", "hint", "--n-layers", 4,
                           "--overwrite")
    assert code == 0, err
    assert bytes(gguf.GGUFReader(str(out)).fields["controlvector.model_hint"].parts[-1]).decode() == "hint"
    code, _, err = run_cli(capsys, "export", "control-vector", path, out, "--model-hint", "x", "--n-layers", 2,
                           "--overwrite")
    assert code == 2 and "Block(s) [2] do not exist in a model with 2 blocks" in error_line(err)


def test_export_neuronpedia(topk_sae_dir, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("The Golden Gate Bridge is a suspension bridge in San Francisco. " * 40)
    out = tmp_path / "np"
    code, stdout, err = run_cli(capsys, "export", "neuronpedia", topk_sae_dir, out, "--features", "3", "7-8",
                                "--model", "tiny", "--data", text, "--max-tokens", 256, "--context-size", 32,
                                "--model-id", "tiny-llama")
    assert code == 0, err
    src = Path(json.loads(stdout.splitlines()[-1])["wrote"])
    assert src == out / "tiny-llama" / "1-res-steerlens"
    import gzip

    feats = [json.loads(x) for x in gzip.decompress((src / "features" / "batch-0.jsonl.gz").read_bytes()).splitlines()]
    assert [f["index"] for f in feats] == ["3", "7", "8"] and feats[0]["hookName"] == "blocks.1.hook_resid_post"
    code, _, err = run_cli(capsys, "export", "neuronpedia", topk_sae_dir, out, "--features", "3", "--model", "tiny")
    assert code == 2 and "pass --overwrite" in error_line(err)


@pytest.fixture
def saved_axis(tmp_path):
    from axis.artifact import AssistantAxis

    g = torch.Generator().manual_seed(0)
    rm, dm = torch.randn(2, 4, 8, generator=g), torch.randn(4, 8, generator=g) + 2
    ax = AssistantAxis(axis=dm - rm.mean(0), default_mean=dm, role_means=rm, role_names=["pirate", "sage"],
                       projections=torch.randn(6, 4, generator=g), is_default=torch.arange(6) < 3,
                       kept=torch.ones(6, dtype=torch.bool), model="unknown", model_name="synthetic",
                       stats={"monitor_layer": 2})
    return ax, ax.save(tmp_path / "axis")


def test_export_axis_both_formats(saved_axis, capsys, tmp_path):
    from axis.formats import read_axis_release, read_neuronpedia_axis

    ax, path = saved_axis
    code, _, err = run_cli(capsys, "export", "axis", path, tmp_path / "rel", "--format", "assistant-axis")
    assert code == 0, err
    torch.testing.assert_close(read_axis_release(tmp_path / "rel").axis, ax.axis, rtol=0, atol=0)
    code, _, err = run_cli(capsys, "export", "axis", path, tmp_path / "np", "--format", "neuronpedia", "--layer", 1)
    assert code == 0, err
    assert read_neuronpedia_axis(tmp_path / "np").config["layer"] == 1
    code, _, err = run_cli(capsys, "export", "axis", path, tmp_path / "np", "--format", "neuronpedia")
    assert code == 2 and "pass --overwrite" in error_line(err)
    assert run_cli(capsys, "export", "axis", path, tmp_path / "np", "--format", "neuronpedia", "--overwrite")[0] == 0
    assert read_neuronpedia_axis(tmp_path / "np").config["layer"] == 2  # the monitor layer


def test_clamp_end_to_end_on_tiny(topk_sae_dir, capsys, tmp_path):
    """A real command through the front end: the tiny model by name, one prompt, one strength."""
    out = tmp_path / "clamp"
    code, stdout, err = run_cli(capsys, "clamp", "--model", "tiny", "--device", "cpu", "--sae", topk_sae_dir,
                                "--experiments", "golden_gate", "--gg-latent", 7, "--gg-max-act", 2, "--n-prompts", 1,
                                "--max-new-tokens", 2, "--strengths", "2", "--families", "paper_clamp",
                                "--neutral-texts", 1, "--neutral-max-tokens", 8, "--no-wandb", "--out", out)
    assert code == 0, err
    head = json.loads(stdout.strip().splitlines()[-1])
    assert set(head) == {"golden_gate"} == set(json.loads((out / "headline.json").read_text()))
    assert head["golden_gate"]["strength"] == 10.0
    names = [r["condition"]["name"] for r in json.loads((out / "golden_gate" / "results.json").read_text())["results"]]
    assert names == ["baseline", "paper_clamp_2x", "paper_clamp_10x"]
    assert head["golden_gate"]["paper_clamp_10x"]["units"]  # strength units recorded


def test_eval_end_to_end_with_saebench(topk_sae_dir, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    rows = [json.loads(x) for x in (ROOT / "lm/data/prompt_bank.jsonl").read_text().splitlines() if x]
    text.write_text("\n\n".join(r["prompt"] for r in rows[:200]))
    out = tmp_path / "ev" / "metrics.json"
    code, stdout, err = run_cli(capsys, "eval", topk_sae_dir, "--model", "tiny", "--data", text, "--tokens", 256,
                                "--context-size", 32, "--out", out, "--saebench")
    assert code == 0, err
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert metrics == json.loads(out.read_text()) and metrics["l0"] == 8.0  # TopK k=8
    core = json.loads((out.parent / "saebench_core.json").read_text())
    assert core["eval_type_id"] == "core" and out.with_suffix(".png").is_file()
    code, _, err = run_cli(capsys, "eval", "sae_lens:some-release/some-id")
    assert code == 2 and error_line(err).startswith("a registry SAE has no directory")


def test_every_script_wraps_a_command():
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py") if not p.stem.startswith("bench_")}
    assert scripts == set(SCRIPTS) and set(SCRIPTS.values()) <= set(COMMANDS)
    for stem, command in SCRIPTS.items():
        assert f'run_command("{command}"' in (ROOT / "scripts" / f"{stem}.py").read_text(), stem


def test_scripts_run_as_files():
    """`python scripts/X.py` still works, with the command's help and its one-line errors (the notebooks
    command: the one that answers without importing torch)."""
    res = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 0 and res.stdout.startswith("usage: steerlens notebooks")
    res = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--small"], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 2 and error_line(res.stderr).startswith("--small runs would overwrite")


def test_script_main_keeps_raising(tmp_path):
    """In-process, scripts/X.py main(argv) raises as before (its callers and tests catch the exception)."""
    from scripts import train_sae

    with pytest.raises(KeyError, match="Unknown recipe"):
        train_sae.main(["--recipe", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="argument --seed: expected one argument"):
        train_sae.main(["--out", str(tmp_path), "--seed"])


def test_readme_examples_parse():
    """Every `steerlens ...` example in the README's command-line section parses (flags not renamed away)."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Command line"):]
    section = section[:section.index("\n## ", 3)]
    examples = [e for e in re.findall(r"`(steerlens [^`]+)`", section) if "COMMAND" not in e and "..." not in e]
    assert {shlex.split(e)[1] for e in examples} >= set(COMMANDS)
    for e in examples:
        argv = shlex.split(e)[1:]
        if argv == ["--help"]:
            continue
        args = parsed(*argv)
        assert args.command == argv[0], e
