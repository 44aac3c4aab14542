"""The host OS image: recipe validation (pure), layout and manifest (pure), build driver."""
