"""The official prompt stage (`high_level_info`): the CoCa caption or ResNet-50 class that leads the prompt.

stage.py builds the prompt by the official rules and runs the models; models.py loads them; search.py is CoCa's
caption search; open_clip_coca.py is everything asked of open_clip; folders.py says where the models live and how
they are fetched. Importing the package loads nothing heavy.
"""
