"""Programs that run ON the nodes for offline jobs (`sparkctl run`), shipped as
files with a launch. They import nothing from sparkctl."""
