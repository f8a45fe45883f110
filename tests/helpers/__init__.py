"""What several test files share (test files never import each other)."""
