"""Reading images and prompt files, writing masks: every file the zoo touches goes through here."""
