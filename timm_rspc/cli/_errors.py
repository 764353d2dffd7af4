"""How commands report a user's mistake: one ``timm-rspc CMD: error: ...`` line and exit status 2, no traceback."""
import contextlib
import sys

# Errors whose message tells the user what was wrong and what to do; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ConnectionError)


class CommandFailed(SystemExit):
    pass


@contextlib.contextmanager
def reported_errors(command: str):
    from timm_rspc._timm_compat import TimmVersionError
    from timm_rspc.models.checkpoint_loading import CheckpointError
    try:
        yield
    except USER_ERRORS + (CheckpointError, TimmVersionError) as e:
        print(f'timm-rspc {command}: error: {e}', file=sys.stderr)
        raise CommandFailed(2) from None
