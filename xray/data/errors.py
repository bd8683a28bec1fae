"""The error a library raises for one bad setting. It names the setting by the library's own name (a parameter or a
field, e.g. ``num_shards``); a front-end that calls the setting something else names it its own way: the command
line says ``--num-shards`` (xray/commands: ``user_error``)."""

from __future__ import annotations


class SettingError(ValueError):
    """``setting``: the library's name; ``shown``: the value as the message shows it; ``rule``: what is wrong, from
    its first character on (" must be at least 1", ": choose one of ...")."""

    def __init__(self, setting: str, shown, rule: str):
        self.setting, self.shown, self.rule = setting, str(shown), rule
        super().__init__(self.named(setting))

    def named(self, name: str) -> str:
        return f"{name} {self.shown}{self.rule}"
