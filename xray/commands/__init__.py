"""The `xray` subcommands, by area (data, training, serving, cluster): each module's ``register(sub)`` adds its
parsers. A command parses its flags, calls one library function, and turns the library's errors into one line
(UserError: exit 2) or the exit status the command documents. xray.cli builds the parser and runs it."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


def user_error(error: Exception) -> UserError:
    """A library's error as the command line says it: a bad setting is named by its flag (the library's num_shards
    is --num-shards here), anything else as the library wrote it."""
    from xray.data.errors import SettingError

    if isinstance(error, SettingError):
        return UserError(error.named("--" + error.setting.replace("_", "-")))
    return UserError(str(error))


def config_from_args(args):
    """The preset (or --config file) with the key=value overrides; a bad one is a one-line UserError."""
    from xray.trainer.config import Config, ConfigError, preset

    try:
        config = Config.load(args.config) if args.config else preset(args.preset)
        return config.override(args.overrides)
    except ConfigError as error:
        raise user_error(error) from None
