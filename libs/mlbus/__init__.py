"""mlbus: close the machine-learning loop over Kafka.

The shared library every service builds on: event contracts (`mlbus.events`),
the Kafka bus (`mlbus.bus`), settings (`mlbus.config`), telemetry
(`mlbus.telemetry`), the project spec (`mlbus.spec`) and the other formats two
services share. Services live in `mlbus.<service>` and never import one another;
the shell around them (`mlbus.cli`, `mlbus.runtime`, `mlbus.demo`, …) lives in
app/ and is imported by neither.
"""

__version__ = "0.1.0"
