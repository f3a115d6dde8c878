"""The import pipeline: stages as plain functions over a job context, and their runner."""
