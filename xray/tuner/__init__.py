"""KerasTuner search of dropout, L2 and learning rate around the team's defaults (`xray tune`).

Builds models with xray.trainer.model and data with xray.data.reader, and hands back a trainer config
(best_config.json); the trainer never learns that the tuner exists.
"""

from xray.data.errors import SettingError

ALGORITHMS = ("bayesian", "random")
# Named on the command line but refused until they work, with the reason.
REFUSED_ALGORITHMS = {
    "hyperband": "its later rounds would start from fresh weights, not from the weights their earlier round ended with "
                 "(KerasTuner's Hyperband reloads them; this tuner keeps no per-trial weights yet), and train only the "
                 "round's remaining epochs: use bayesian or random",
}


def check_algorithm(name: str) -> None:
    """Raises ValueError, in one line, for an algorithm that is unknown or refused."""
    if name in REFUSED_ALGORITHMS:
        raise SettingError("algorithm", name, f" is refused: {REFUSED_ALGORITHMS[name]}")
    if name not in ALGORITHMS:
        raise SettingError("algorithm", repr(name), f": choose one of {', '.join(ALGORITHMS)}")
