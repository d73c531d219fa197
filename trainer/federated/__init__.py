"""Federated learning across sites on Flower: trainguard's robust aggregation and update
monitor as a Flower strategy, sites on their own shards, TLS from the cluster PKI, every round
audited. Flower (and torch) are imported by the submodules that need them, not here."""

from trainguard.trainer.federated.config import (
    FederationConfig,
    FederationSection,
    FLSimulateSection,
    PrivacySection,
    load_fl_config,
    site_names,
)

__all__ = ["FLSimulateSection", "FederationConfig", "FederationSection", "PrivacySection",
           "load_fl_config", "site_names"]
