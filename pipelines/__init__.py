"""ctpipe pipelines: KFP wrappers, pipeline definitions, config, local runner and CLI."""
