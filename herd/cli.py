"""The ``herd`` command line (typer). ``herd --help`` lists the commands; each has its own ``--help``.

    herd run                         # the whole pipeline on the tiny recipe, embedded runtime under ./.herd
    herd plan --set pretrain.steps=50
    herd flow data --recipe my.yaml
    herd lineage <artifact digest | m-model id> --down --format mermaid
    herd recipe list | show scout | validate my.yaml
    herd up / herd down / herd ui

Bad input (a recipe that does not validate, an unknown flow or id) prints one line and exits 2; a failed step
prints one line and exits 1. Nothing is written before the recipe validates.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import herd
from herd.platform.errors import HerdError
from herd.platform.mlflow_views import UI_PORT

app = typer.Typer(
    name="herd",
    help="Build a Llama-4-style model herd end to end (data -> pretrain -> codistill -> post-train -> quantize "
    "-> evaluate -> serve) on Ray, tracked in MLflow. Runs on a laptop (recipe tiny) or a GPU cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
out = Console()
err = Console(stderr=True)

RecipeOpt = Annotated[str | None, typer.Option("--recipe", "-r", help="Built-in recipe name or YAML file "
                                               "(default: tiny).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a field: section.key=value "
                                                  "(repeatable; beats the recipe file).")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster to use (host:port, ray://..., "
                                                "auto). Default: `herd up`'s head, else a local Ray.")]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (http://...). "
                                                 "Default: sqlite at $HERD_HOME/mlflow.db.")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Artifact store root (path, file://, "
                                              "s3://bucket/prefix). Default: $HERD_HOME/artifacts.")]
ForceOpt = Annotated[list[str] | None, typer.Option("--force", help="Re-run this step (pretrain.train) or flow "
                                                    "(pretrain) from scratch, under a fresh Ray Train run, even "
                                                    "when cached (repeatable). Dependents re-run only if its "
                                                    "outputs change.")]
WaitOpt = Annotated[float, typer.Option("--wait-lease", help="Seconds to wait for a step another `herd run` on "
                                        "the same store is running (then reuse its result); 0 refuses at once, "
                                        "naming the holder.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"herd {herd.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print herd's version and exit.")] = False) -> None:
    """herd: a Llama 4 style herd, end to end."""


def _fail(e: HerdError) -> None:
    err.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
    raise typer.Exit(e.exit_code)


def _say(message: str) -> None:
    """One line of progress for the user (never wrapped: paths and commands stay copy-pastable)."""
    out.print(message, soft_wrap=True, highlight=False, markup=False)


def _load(recipe: str | None, sets: list[str] | None):
    from herd.platform.config import load_recipe

    return load_recipe(recipe, sets or [])


def _runtime(rec, address: str | None, tracking_uri: str | None, store: str | None):
    from herd.platform.runtime import Runtime

    # route_logs: Ray's own output goes to $HERD_HOME/logs/ray-*.log from the moment Ray starts, not the terminal.
    return Runtime(rec.runtime, address=address, tracking_uri=tracking_uri, store=store, route_logs=True)


def pipeline_steps(rec, flows: list[str] | None = None):
    """Steps of all registered flows, in pipeline order (``flows`` only selects targets; upstream steps stay)."""
    from herd import flows as registry
    from herd.platform.errors import FlowError

    names = list(registry.FLOWS)
    for f in flows or []:
        if f not in registry.FLOWS:
            raise FlowError(f"unknown flow {f!r}; registered flows: {', '.join(names)}")
    steps = []
    for name in names:
        try:
            build = registry.builder(name)
        except ModuleNotFoundError as e:
            raise FlowError(f"flow {name!r} is registered in herd/flows/__init__.py but cannot be imported ({e}); "
                            "fix or remove its FLOWS entry") from None
        steps.extend(build(rec))
    return steps


def _targets(steps, flows: list[str] | None) -> list[str] | None:
    if not flows:
        return None
    return [s.name for s in steps if s.flow in flows]


def _do_run(recipe, sets, address, tracking_uri, store, flows: list[str] | None, force: list[str] | None = None,
            wait_lease: float = 0.0) -> None:
    try:
        rec = _load(recipe, sets)
        steps = pipeline_steps(rec, flows)
        from herd.platform.runner import Runner

        rt = _runtime(rec, address, tracking_uri, store)
        targets = _targets(steps, flows)
        deploying = any(s.flow == "deploy" for s in steps) and (not flows or "deploy" in flows)
        if deploying:
            # the endpoint must outlive this command: run on a persistent local Ray head (as `herd up`)
            rt.ensure_persistent(on_event=_serve_say)
            _serve_say("herd keeps a persistent local Ray head for the served endpoint; `herd status` lists "
                       "endpoints, `herd down` stops them and the head")
        if rt.on_own_head():  # this machine's head (`herd up`, an earlier run), not a cluster named by --address
            _free_cores_of_old_endpoints(rt, steps, targets, force or (), deploying)
        try:
            runner = Runner(rt)
            res = runner.run(steps, targets, recipe_source=rec.source, force=force or (),
                             lease_wait_s=wait_lease, recipe=rec)
        finally:
            rt.stop()
    except HerdError as e:
        _fail(e)
    out.print(f"[green]done[/] in {res.duration_s:.1f}s: {len(res.executed)} step(s) ran, {len(res.reused)} "
              f"reused. MLflow runs: {', '.join(f'{k}={v}' for k, v in res.flow_runs.items()) or 'none new'}")
    if res.flow_runs:  # the runs view; for a sqlite store nobody serves yet, the `herd ui` command that will
        _say(runner.lineage.where_to_look(next(iter(res.flow_runs.values())), rec.source))


def _free_cores_of_old_endpoints(rt, steps, targets, force, deploying: bool) -> None:
    """Stop HERD_HOME's endpoints on this machine's head before steps other than deploy run again.

    An earlier run's endpoint keeps its replicas' CPUs (placement groups) reserved; a re-run's training step asks
    Ray Train for every core and would wait for them forever ("starting Ray Train workers"). deploy.serve serves
    the new models at the end (`herd flow deploy` when this command does not deploy). A run that reuses every
    step leaves the endpoint alone."""
    from herd.platform.runner import Runner
    from herd.serve.app import recorded, stop

    if not recorded(rt.home):
        return
    todo = [e.step for e in Runner(rt, progress=False).plan(steps, targets, force=force)
            if e.action == "run" and not e.step.startswith("deploy.")]
    if not todo:
        return
    rt.start()
    stopped = stop(rt.home)
    if stopped:
        _serve_say(f"stopped endpoint {', '.join(stopped)} of an earlier run: its replicas hold CPUs that "
                   f"{todo[0]}{' and later steps' if len(todo) > 1 else ''} need on this machine; "
                   + ("deploy.serve serves the new models at the end" if deploying
                      else "`herd flow deploy` serves them again"))


@app.command()
def run(recipe: RecipeOpt = None, set_: SetOpt = None, address: AddressOpt = None, tracking_uri: TrackingOpt = None,
        store: StoreOpt = None, force: ForceOpt = None, wait_lease: WaitOpt = 0.0) -> None:
    """Run the whole pipeline: every registered flow in order, reusing every step that is cached."""
    _do_run(recipe, set_, address, tracking_uri, store, None, force, wait_lease)


@app.command()
def flow(name: Annotated[str, typer.Argument(help="Flow to run (data, pretrain, distill, ...).")],
         recipe: RecipeOpt = None, set_: SetOpt = None, address: AddressOpt = None,
         tracking_uri: TrackingOpt = None, store: StoreOpt = None, force: ForceOpt = None,
         wait_lease: WaitOpt = 0.0) -> None:
    """Run one flow's steps plus any upstream step that is not cached."""
    _do_run(recipe, set_, address, tracking_uri, store, [name], force, wait_lease)


@app.command()
def plan(flow_name: Annotated[str | None, typer.Argument(metavar="[FLOW]", help="Limit to this flow "
                                                         "(and its upstream).")] = None,
         recipe: RecipeOpt = None, set_: SetOpt = None, store: StoreOpt = None, force: ForceOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False) -> None:
    """Say for each step whether it will run or be reused, and WHY (changed field, input, code module, package
    version, never ran); a cause shared by several steps is said first, in one line."""
    from herd.platform.runner import Runner, summarize

    try:
        rec = _load(recipe, set_)
        steps = pipeline_steps(rec, [flow_name] if flow_name else None)
        rt = _runtime(rec, None, None, store)
        entries = Runner(rt, progress=False).plan(steps, _targets(steps, [flow_name] if flow_name else None),
                                                  force=force or ())
    except HerdError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps([e.__dict__ for e in entries]))
        return
    for line in summarize(entries):
        out.print(line, soft_wrap=True, highlight=False, markup=False)
    t = Table("step", "action", "why", box=None, header_style="bold")
    for e in entries:
        color = "cyan" if e.action == "reuse" else "yellow"
        t.add_row(e.step, f"[{color}]{e.action}[/]", "; ".join(e.reasons))
    out.print(t)


class Fmt(str, Enum):
    text = "text"
    json = "json"
    mermaid = "mermaid"


@app.command()
def lineage(ident: Annotated[str, typer.Argument(metavar="ID", help="Artifact digest (>= 8 chars), MLflow "
                                                 "LoggedModel id (m-...) or a step's run id.")],
            down: Annotated[bool, typer.Option("--down", help="What was made from ID (default: what made "
                                               "ID, up to the raw sources).")] = False,
            fmt: Annotated[Fmt, typer.Option("--format", "-f", help="text | json | mermaid")] = Fmt.text,
            recipe: RecipeOpt = None, set_: SetOpt = None, tracking_uri: TrackingOpt = None) -> None:
    """Print the lineage tree of an artifact or model, from MLflow."""
    from herd.platform.lineage import LineageReader, render_text, to_mermaid

    try:
        rec = _load(recipe, set_)
        rt = _runtime(rec, None, tracking_uri, None)
        reader = LineageReader(rt.tracking_uri, rt.experiment)
        tree = reader.down(ident) if down else reader.up(ident)
    except HerdError as e:
        _fail(e)
    direction = "down" if down else "up"
    if fmt is Fmt.json:
        print(json.dumps(tree, indent=2))
    elif fmt is Fmt.mermaid:
        print(to_mermaid(tree, direction))
    else:
        print(render_text(tree, direction))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (the links herd prints for a sqlite store use "
                                          f"{UI_PORT}).")] = UI_PORT, recipe: RecipeOpt = None,
       set_: SetOpt = None) -> None:
    """Serve the MLflow UI for HERD_HOME on 127.0.0.1 (or print the links of the `herd up` server).

    Works from any directory: MLflow's own artifacts (plots, model files) are served from HERD_HOME, and a
    HERD_HOME that was moved is re-pointed at its new place first."""
    from herd.platform.runtime import base_env, read_services

    try:
        rec = _load(recipe, set_)
    except HerdError as e:
        _fail(e)
    home = rec.runtime.resolved_home()
    running = read_services(home).get("mlflow")
    if running:
        _print_ui_links(running["uri"], running["uri"], rec.runtime.experiment, "MLflow UI (from `herd up`)")
        return
    home.mkdir(parents=True, exist_ok=True)
    base_env(home)
    uri = rec.runtime.tracking_uri or rec.runtime.resolved_tracking_uri()
    from herd.platform.lineage import relocate_artifacts

    for old in relocate_artifacts(uri, home):
        err.print(f"HERD_HOME moved: MLflow artifacts re-pointed from {old} to {home / 'mlartifacts'}",
                  soft_wrap=True, highlight=False)
    base = f"http://127.0.0.1:{port}"
    from herd.platform.mlflow_views import serves
    from herd.platform.services import free_port

    if free_port(port) != port:  # something listens there: this very UI (say so), or another program
        known = _any_run(uri, rec.runtime.experiment)
        if known and serves(base, known):
            _print_ui_links(uri, base, rec.runtime.experiment, f"MLflow UI for {uri} (already running)")
            return
        _fail(HerdError(f"port {port} on 127.0.0.1 is in use by another program; stop it, or pass --port N "
                        f"(the links herd prints for a sqlite store point at port {UI_PORT})"))
    _print_ui_links(uri, base, rec.runtime.experiment, f"MLflow UI for {uri}")
    out.print("Ctrl-C stops it.")
    sys.stdout.flush()  # execv replaces this process: what is still buffered would be lost
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no 240 MB job runner beside the UI
    exe = Path(sys.executable).parent / "mlflow"
    # --artifacts-destination: runs logged through `herd up`'s server hold mlflow-artifacts: URIs, which MLflow
    # would otherwise resolve against the current directory (no plots unless started inside HERD_HOME).
    os.execv(str(exe), [str(exe), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                        "--workers", "1", "--artifacts-destination", str(home / "mlartifacts")])


def _any_run(tracking_uri: str, experiment: str) -> str | None:
    """A run id of the experiment (to recognize a UI serving this very store), None when there is none."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1) if exp is not None else []
    return runs[0].info.run_id if runs else None


def _print_ui_links(tracking_uri: str, base: str, experiment: str, title: str) -> None:
    """The runs view of herd's experiment (MLflow opens a bare experiment link on its GenAI overview) and the
    Model Registry."""
    from herd.platform import mlflow_views as views

    exp_id = None
    try:
        from mlflow import MlflowClient

        exp = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else None
    except Exception as e:  # noqa: BLE001 -- a link we cannot compute must not stop the UI from starting
        err.print(f"(could not read experiment {experiment!r} from {tracking_uri}: {e})", highlight=False)
    out.print(f"{title}: {views.experiment_url(base, exp_id) if exp_id else base}", soft_wrap=True,
              highlight=False)
    out.print(f"Model Registry: {views.registry_url(base)}", soft_wrap=True, highlight=False)


@app.command()
def up(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Start a persistent local Ray head and MLflow server for HERD_HOME; later commands attach to them.

    The dashboard and MLflow listen on 127.0.0.1. Ray's GCS and client ports listen on all interfaces (Ray
    cannot bind them to loopback in local mode); token auth protects them: `herd token` prints the token.
    """
    from herd.platform import runtime

    try:
        services = runtime.up(_load(recipe, set_).runtime, on_event=_say)
    except HerdError as e:
        _fail(e)
    r, m = services["ray"], services["mlflow"]
    _say(f"Ray head   {r['address']}  dashboard {r['dashboard']}  (login token: run `{runtime.TOKEN_COMMAND}`; "
         f"file {r['token_path']})")
    _say(f"MLflow     {m['uri']}")
    _say("Stop both with `herd down`.")


@app.command()
def down(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Stop the Ray head and MLflow server that `herd up` started for HERD_HOME (only if still the same processes)."""
    from herd.platform import runtime

    try:
        rec = _load(recipe, set_)
        from herd.serve.app import forget_endpoints

        gone = forget_endpoints(rec.runtime.resolved_home())  # they run on the head stopped below
        stopped = runtime.down(rec.runtime, on_event=_say)
        if gone:
            out.print(f"endpoints stopped with the cluster: {', '.join(gone)}", soft_wrap=True, highlight=False)
    except HerdError as e:
        _fail(e)
    _say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def token(recipe: RecipeOpt = None, set_: SetOpt = None) -> None:
    """Print the Ray dashboard's login token for HERD_HOME (paste it into the dashboard's login dialog)."""
    from herd.platform.runtime import token_path

    try:
        home = _load(recipe, set_).runtime.resolved_home()
        if os.environ.get("RAY_AUTH_TOKEN"):
            print(os.environ["RAY_AUTH_TOKEN"])
            return
        path = token_path(home)
        if not path.is_file():
            raise HerdError(f"no Ray token at {path}: it is created by the first `herd run` or `herd up` for "
                              f"HERD_HOME={home}")
        print(path.read_text().strip())
    except HerdError as e:
        _fail(e)


# ------------------------------------------------------------------------------------------- recipes
@recipe_app.command("list")
def recipe_list() -> None:
    """List the built-in recipes."""
    from herd.platform.config import builtin_recipes, load_recipe

    t = Table("recipe", "teacher params (active)", "student params (active)", box=None, header_style="bold")
    for name in builtin_recipes():
        rec = load_recipe(name)
        t.add_row(name, *[_count(rec.models[m]) for m in ("teacher", "student")])
    out.print(t)


def _count(m) -> str:
    try:
        return f"{_human(m.num_params())} ({_human(m.num_active_params())})"
    except (AttributeError, TypeError) as e:  # the model library may not provide counts for every shape yet
        return f"n/a ({e})"


def _human(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


@recipe_app.command("show")
def recipe_show(name: Annotated[str, typer.Argument(help="Built-in name or YAML file.")] = "tiny",
                set_: SetOpt = None,
                diff: Annotated[bool, typer.Option("--diff", help="Only fields that differ from the defaults.")
                                ] = False
                ) -> None:
    """Print a recipe (resolved, with overrides) and its models' parameter counts."""
    import yaml

    try:
        rec = _load(name, set_)
    except HerdError as e:
        _fail(e)
    data = rec.redacted_dump(exclude_defaults=diff)  # storage options, keys and tokens as ***
    print(yaml.safe_dump(data, sort_keys=False, width=110).rstrip())
    print("\n# parameters (total / active per token)")
    for key, m in rec.models.items():
        print(f"#   {key}: {_count(m)}")


@recipe_app.command("validate")
def recipe_validate(path: Annotated[str, typer.Argument(help="Recipe YAML file (or built-in name).")],
                    set_: SetOpt = None) -> None:
    """Validate a recipe; prints one line naming the bad field on failure (exit 2)."""
    try:
        rec = _load(path, set_)
    except HerdError as e:
        _fail(e)
    out.print(f"[green]ok[/] {rec.source}: models {', '.join(rec.models)}")


# ---------------------------------------------------------------------------------------------- serving
def _serve_say(message: str) -> None:
    out.print(message, soft_wrap=True, highlight=False, markup=False)

@app.command("eval")
def eval_(model: Annotated[str, typer.Argument(metavar="MODEL|show", help="Artifact digest (>= 8 chars), MLflow "
                                               "m-... model id or local HF checkpoint dir; `show` prints every "
                                               "evaluated model's scores.")],
          harness: Annotated[str | None, typer.Option("--harness", metavar="URL", help="Also run lm-eval "
                                                      "local-completions against this OpenAI endpoint.")] = None,
          harness_model: Annotated[str, typer.Option(help="The `model` name the endpoint serves.")] = "herd",
          limit: Annotated[int | None, typer.Option(help="lm-eval: items per task.")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
          recipe: RecipeOpt = None, set_: SetOpt = None, address: AddressOpt = None,
          tracking_uri: TrackingOpt = None, store: StoreOpt = None) -> None:
    """Evaluate MODEL on every suite (scores +- CI on its MLflow model), or `herd eval show` the comparison."""
    import json

    from herd.eval.cli import eval_model, show_summary
    from herd.eval.report import render_table

    try:
        rec = _load(recipe, set_)
        rt = _runtime(rec, address, tracking_uri, store)
        if model == "show":
            summary = show_summary(rt)
        else:
            try:
                summary = eval_model(model, rec, rt, harness_url=harness, harness_model=harness_model, limit=limit,
                                     say=_say)["summary"]
            finally:
                rt.stop()
    except (HerdError, ValueError, ImportError, FileNotFoundError) as e:
        _fail(e if isinstance(e, HerdError) else HerdError(str(e)))
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    elif not summary["rows"]:
        _say("no evaluated models yet: run `herd flow evaluate` or `herd eval MODEL`")
    else:
        out.print(render_table(summary))


@app.command()
def serve(models: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Artifact digest (>= 8 chars), "
                                                      "MLflow m-... model id, or a local HF checkpoint dir; "
                                                      "several are served side by side, routed by `model`.")],
          engine: Annotated[str | None, typer.Option(help="vllm | herd | auto (default: the recipe's "
                                                     "deploy.engine).")] = None,
          port: Annotated[int | None, typer.Option(help="HTTP port (default: deploy.port).")] = None,
          name: Annotated[str | None, typer.Option("--name", help="The `model` name clients send (one "
                                                   "model).")] = None,
          api_key_env: Annotated[str | None, typer.Option(help="Env var holding the API key; requests "
                                                          "without it get 401.")] = None,
          recipe: RecipeOpt = None, set_: SetOpt = None, address: AddressOpt = None) -> None:
    """Serve models behind an OpenAI-compatible endpoint on the persistent local Ray (started if needed).

    Returns once the endpoint answers; it keeps running: `herd status` lists it, `herd down` stops it."""
    from herd.serve.commands import examples, serve_models

    try:
        rec = _load(recipe, set_)
        upd = {k: v for k, v in {"engine": engine, "port": port, "served_model_name": name,
                                 "api_key_env": api_key_env}.items() if v is not None}
        cfg = rec.deploy.model_validate({**rec.deploy.model_dump(), **upd})
        ep = serve_models(models, rec, cfg, address=address, say=_serve_say)
    except (HerdError, ValueError, ImportError) as e:
        _fail(e if isinstance(e, HerdError) else HerdError(str(e)))
    out.print(f"[green]serving[/] {', '.join(m['id'] for m in ep.models)} at {ep.url}")
    print(examples(ep))
    _serve_say("The endpoint keeps running on the persistent local Ray: `herd status` lists it, `herd down` stops it.")


@app.command()
def status(recipe: RecipeOpt = None, set_: SetOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List HERD_HOME's served endpoints and whether each answers."""
    from herd.serve.commands import status_rows

    try:
        rows = status_rows(_load(recipe, set_).runtime.resolved_home())
    except HerdError as e:
        _fail(e)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        _serve_say("no endpoints (start one with `herd serve MODEL` or `herd run`)")
        return
    table = Table("app", "url", "models", "up")
    for r in rows:
        table.add_row(r["app"], r["url"], ", ".join(f"{m['id']} ({m['role']}, {m['engine']})" for m in r["models"]),
                      "[green]yes[/]" if r["up"] else "[red]no[/]")
    out.print(table)


if __name__ == "__main__":
    app()
