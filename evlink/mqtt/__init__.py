"""Charge state and a charging switch over MQTT, with Home Assistant discovery.

- :mod:`evlink.mqtt.config`: ``EVLINK_MQTT_URL`` parsed; topic prefixes checked
- :mod:`evlink.mqtt.topics`: the topic names
- :mod:`evlink.mqtt.discovery`: Home Assistant's discovery configs and the retained
  JSON, pure functions
- :mod:`evlink.mqtt.accounts`: publishing per user (``evlink mqtt enable``)
- :mod:`evlink.mqtt.commands`: a switch's ON/OFF run as the user's charging command
- :mod:`evlink.mqtt.bridge`: the broker connection and the publisher
"""
