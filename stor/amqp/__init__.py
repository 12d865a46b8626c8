"""AMQP publish of every requested SHA."""
