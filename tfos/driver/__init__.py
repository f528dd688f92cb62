"""Code that runs in the Spark driver: cluster lifecycle, control server, template."""
