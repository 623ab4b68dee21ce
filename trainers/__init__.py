"""The training loop (engine.py, knowledge_evolution.py), the experiment folder
(experiment.py) and the commands that use a trained model (tools.py)."""
