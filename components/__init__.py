"""ctpipe components: one plain, typed Python function per pipeline step.

Each ``components/<name>.py`` holds the logic of one step and imports no kfp, so a
notebook can call it directly. ``pipelines/kfp_components.py`` wraps each function in a
thin KFP component for the local runner and the cluster.
"""
