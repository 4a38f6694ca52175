"""DualPath operator: reconciles DualPathCluster custom resources into running children."""
