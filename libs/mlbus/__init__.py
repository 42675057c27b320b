"""mlbus: close the machine-learning loop over Kafka.

The shared library every service builds on: event contracts (`mlbus.events`),
the Kafka bus (`mlbus.bus`), settings (`mlbus.config`), telemetry
(`mlbus.telemetry`), the project spec (`mlbus.spec`), the embedded runtime
(`mlbus.runtime`) and the `mlbus` command line (`mlbus.cli`).
Services live in `mlbus.<service>` and never import one another.
"""

__version__ = "0.1.0"
