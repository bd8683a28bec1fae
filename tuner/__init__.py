"""KerasTuner search of dropout, L2 and learning rate around the team's defaults (`xray tune`).

Builds models with trainer.model and data with data.reader, and hands back a trainer config
(best_config.json); the trainer never learns that the tuner exists.
"""
