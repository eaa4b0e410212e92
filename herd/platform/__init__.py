"""herd.platform: recipes, the artifact store, MLflow lineage, the Ray runtime and the flow runner.

    from herd.platform.config import load_recipe
    from herd.platform.runner import Resources, Runner, Step, StepContext
"""
