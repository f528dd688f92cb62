"""Code that runs on Spark executors: node bootstrap, the node process, NodeContext."""
