"""HTTP transports: native REST (/v1), V2 REST (/v2), health and metrics."""
