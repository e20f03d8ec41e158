"""Acting on a decision: one small `Output` interface, one module per output type, and the dispatcher.

Each output gets its own worker thread and retries (`dispatch`), so a slow webhook never delays the GPIO
pulse and a dead one never stops classification. MQTT spools every event to disk first and deletes it
only after the broker's PUBACK, so events survive a broker outage (and a restart). Hardware libraries
(gpiozero, pyserial) are imported only when their output is configured. The types are found by
`registry`: a new type is a new module here, nothing else.
"""

from sorter.outputs.base import Output, OutputConfig
from sorter.outputs.command import CHILD_ENV, CommandOutput, child_env, event_env
from sorter.outputs.dispatch import Dispatcher, Outcome, OutputStats
from sorter.outputs.gpio import GpioOutput
from sorter.outputs.mqtt import MqttOutput, Spool
from sorter.outputs.registry import build_outputs, types
from sorter.outputs.serial import SerialOutput
from sorter.outputs.webhook import WebhookOutput, split_credentials

__all__ = ["CHILD_ENV", "CommandOutput", "Dispatcher", "GpioOutput", "MqttOutput", "Outcome", "Output",
           "OutputConfig", "OutputStats", "SerialOutput", "Spool", "WebhookOutput", "build_outputs", "child_env",
           "event_env", "split_credentials", "types"]
