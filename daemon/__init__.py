"""chatledger: a durable SendPulse webhook journal that delivers to PostgreSQL and Airtable."""

__version__ = "0.1.0"
