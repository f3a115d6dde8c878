"""What each import method and admin action does (submit, uploads, copy-image, deletion…)."""
