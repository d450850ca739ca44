"""The command line without Lightning's advertising tips.

Every ``Trainer`` logs "💡 Tip: For seamless cloud logging ... try installing litlogger" (when no ``LitLogger`` is
among its loggers), and one that adds its own ``ModelCheckpoint`` logs a tip for litmodels. Lightning has no switch
for them (checked against pytorch_lightning 2.6.6: ``LoggerConnector.configure_logger`` and
``_CallbackConnector._maybe_show_litmodels_tip`` call ``rank_zero_info`` unconditionally), and silencing its logger
would hide its useful lines too (the devices found, the checkpoint restored). :func:`hide_lightning_tips` drops
exactly these records from the loggers they are logged to, through the ``logging`` module's public filters; the
command installs it, the library leaves Lightning's logging to you.

Example:
    >>> import logging
    >>> tip = "💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)"
    >>> record = logging.LogRecord("x", logging.INFO, "", 0, tip, (), None)
    >>> LightningTipFilter().filter(record)
    False
    >>> record.msg = "GPU available: False, used: False"
    >>> LightningTipFilter().filter(record)
    True
"""

from __future__ import annotations

import logging
import re

__all__ = ["TIP_LOGGERS", "LightningTipFilter", "hide_lightning_tips"]

TIP_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
"""The loggers that Lightning's ``rank_zero_info`` may log to: each package sets it on import, the last one wins."""

_TIP = re.compile(r"^💡 Tip: .*\[(litlogger|litmodels)\]\(https://pypi\.org/project/(litlogger|litmodels)/\)")


class LightningTipFilter(logging.Filter):
    """A ``logging.Filter`` that drops Lightning's tips to install litlogger or litmodels, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _TIP.match(str(record.msg))


def hide_lightning_tips() -> None:
    """Drop Lightning's litlogger and litmodels tips from its loggers (once: a second call adds nothing)."""
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, LightningTipFilter) for existing in logger.filters):
            logger.addFilter(LightningTipFilter())
