"""Source-task selection: measured task transfer (TaskWeb) and, later, TaskShop and mixtures."""
