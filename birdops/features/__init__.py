"""Feature front ends (torch modules), activity detection and the sharded feature cache."""
