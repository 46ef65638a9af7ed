"""DVC stages: one thin module per stage (parse paths, load params, call birdops, write outputs)."""
