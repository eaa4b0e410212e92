"""Recipes: built-ins validate, precedence CLI > file > defaults, and bad recipes fail in one line, early."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from herd.cli import app
from herd.platform.config import builtin_recipes, load_recipe
from herd.platform.errors import RecipeError
from herd.train.config import PretrainConfig

cli = CliRunner()


def test_builtins_validate_and_tiny_is_default():
    assert builtin_recipes() == ["maverick", "scout", "small", "test", "tiny"]  # test: the tests' reduced pipeline
    tiny = load_recipe()
    assert tiny.source == "tiny"
    assert set(tiny.models) == {"teacher", "student"}
    assert all(m.vocab_size == tiny.data.tokenizer.vocab_size for m in tiny.models.values())
    scout, maverick = load_recipe("scout"), load_recipe("maverick")
    s, m = scout.models["student"], maverick.models["student"]
    assert (s.hidden_size, s.num_hidden_layers, s.num_local_experts, s.interleave_moe_layer_step) == (5120, 48, 16, 1)
    assert (m.num_local_experts, m.interleave_moe_layer_step, m.use_qk_norm) == (128, 2, False)
    assert s.vocab_size == m.vocab_size == 202048


def test_precedence_cli_over_file_over_defaults(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("base: tiny\npretrain: {steps: 40, log_every: 5}\nmodels: {student: {hidden_size: 64}}\n")
    rec = load_recipe(f, ["pretrain.steps=60", "models.teacher.num_hidden_layers=2"])
    assert rec.pretrain.steps == 60  # --set beats the file
    assert rec.pretrain.log_every == 5  # the file beats the default
    assert rec.pretrain.micro_batch_size == PretrainConfig.model_fields["micro_batch_size"].default  # default
    assert rec.models["student"].hidden_size == 64 and rec.models["student"].num_hidden_layers == 4  # deep merge
    assert rec.models["teacher"].num_hidden_layers == 2
    assert "--set pretrain.steps=60" in rec.source
    rec = load_recipe("tiny", ["data.sources=[synthetic]", "quantize.ignore=[lm_head]", "runtime.home=/x"])
    assert rec.quantize.ignore == ["lm_head"] and rec.runtime.home == "/x"


def _bad_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return str(p)


BAD = [  # (id, recipe or None, --set list, expected substrings of the one-line error)
    ("unknown key", None, ["pretrain.stepz=3"], ["unknown key pretrain.stepz", "allowed keys here:", "steps"]),
    ("wrong type", None, ["pretrain.steps=many"], ["pretrain.steps = 'many'", "valid integer"]),
    ("zero size", None, ["models.student.hidden_size=0"], ["models.student.hidden_size = 0", "greater than 0"]),
    ("negative size", None, ["data.packing.seq_len=-5"], ["data.packing.seq_len = -5", "greater than or equal"]),
    ("heads vs width", None, ["models.teacher.num_attention_heads=3"],
     ["models.teacher", "num_attention_heads (3) must divide hidden_size (256)"]),
    ("missing source", None, ["data.sources=[no/such/corpus.jsonl]"],
     ["data.sources[0].uri", "no/such/corpus.jsonl", "does not exist"]),
    ("bad enum", None, ["pretrain.schedule.kind=linear"], ["pretrain.schedule.kind = 'linear'", "'cosine' or 'wsd'"]),
    ("override syntax", None, ["pretrain.steps"], ["bad override 'pretrain.steps'", "section.key=value"]),
    ("override no key", None, ["=3"], ["bad override '=3'"]),
    ("vocab mismatch", None, ["models.student.vocab_size=1000"],
     ["models.student.vocab_size = 1000", "data.tokenizer.vocab_size = 4096"]),
    ("unknown model ref", None, ["distill.teacher=giant"], ["distill.teacher = 'giant' names no model",
                                                          "student, teacher"]),
    ("port range", None, ["deploy.port=70000"], ["deploy.port = 70000", "less than or equal to 65535"]),
    ("teacher missing", "models:\n  student: {hidden_size: 128}\n  other: {hidden_size: 64}\n",
     [], ["models.teacher is missing", "teacher and a student"]),
    ("unknown section", "bogus: 1\n", [], ["unknown key bogus", "allowed keys here: runtime, data, models"]),
    ("not yaml", "pretrain: [1, 2\n", [], ["is not valid YAML at line"]),
    ("no such file", "@missing", [], ["no such file and not a built-in recipe"]),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_recipe_fails_in_one_line_and_writes_nothing(case, herd_home, tmp_path):
    _, text, sets, expected = case
    args = ["recipe", "validate"]
    if text == "@missing":
        args.append(str(tmp_path / "missing.yaml"))
    elif text is not None:
        args.append(_bad_file(tmp_path, text))
    else:
        args.append("tiny")
    for s in sets:
        args += ["--set", s]
    res = cli.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    for e in expected:
        assert e in lines[0], lines[0]
    # the same error stops `herd run` before anything is created
    recipe_opt = ["--recipe", args[2]] if args[2] != "tiny" else []
    run = cli.invoke(app, ["run", *recipe_opt, *[x for s in sets for x in ("--set", s)]])
    assert run.exit_code == 2 and lines[0].split("error: ", 1)[-1] in run.output
    assert not herd_home.exists()


def test_recipe_error_type_for_library_users():
    with pytest.raises(RecipeError, match=r"models.student.hidden_size = -1"):
        load_recipe("tiny", ["models.student.hidden_size=-1"])


def test_cli_recipe_show_list_and_version():
    res = cli.invoke(app, ["recipe", "show", "tiny", "--set", "pretrain.steps=77"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output.split("\n# parameters")[0])
    assert shown["pretrain"]["steps"] == 77 and shown["models"]["teacher"]["hidden_size"] == 256
    assert "#   teacher:" in res.output
    res = cli.invoke(app, ["recipe", "list"])
    assert res.exit_code == 0 and all(n in res.output for n in ("tiny", "scout", "maverick"))
    res = cli.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("herd ")


def test_scout_and_maverick_have_llama4_sizes():
    """Text-decoder sizes match Meta's published 17B-active / 109B and 400B-total figures."""
    for name, total in (("scout", 107.8e9), ("maverick", 400.7e9)):
        text = load_recipe(name).models["student"].model_copy(update={"vision": None})
        assert text.num_params() == pytest.approx(total, rel=0.01)
        assert text.num_active_params() == pytest.approx(17.2e9, rel=0.01)
        teacher = load_recipe(name).models["teacher"].model_copy(update={"vision": None})
        assert teacher.num_active_params() > 10 * text.num_active_params()


def test_python_dash_m_herd_and_console_script(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, HERD_HOME=str(tmp_path / "home"))
    res = subprocess.run([sys.executable, "-m", "herd", "--version"], capture_output=True, text=True, env=env,
                         check=False, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("herd ")
    script = Path(sys.executable).parent / "herd"
    res = subprocess.run([str(script), "recipe", "validate", "tiny", "--set", "pretrain.steps=0"],
                         capture_output=True, text=True, env=env, check=False, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "pretrain.steps = 0" in res.stderr
    assert not (tmp_path / "home").exists()
