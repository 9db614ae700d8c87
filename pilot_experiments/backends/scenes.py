"""A small set of written scenes with natural reference captions, for text-only checkpoints.

Each scene's `description` stands in for the picture: a text-only model reads it where a
vision-language model would read visual tokens, so it is the part of the prompt that pruning and
cache compression act on. `captions` are short human-style captions of the same scene, the
references that caption quality is scored against. All text was written for this project.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scene:
    description: str
    captions: tuple[str, ...]


INSTRUCTION = "Write a one-sentence caption for this photo."

SCENES = (
    Scene("The photo shows a narrow cobblestone street in the early morning. A baker in a white apron is carrying a tray of "
          "round loaves out of a small shop with a green door. Two bicycles lean against the wall beside the window, and a "
          "grey cat sits on the step watching him. The sky above the rooftops is pale pink.",
          ("A baker carries a tray of bread out of a shop with a green door while a cat watches.",
           "A baker with fresh loaves steps onto a cobblestone street at dawn.")),
    Scene("A wide sandy beach stretches under a bright blue sky. In the foreground a young girl in a yellow swimsuit is "
          "building a sand castle with a red bucket and a small shovel. Behind her, three surfers paddle out toward large "
          "white-capped waves, and a lifeguard tower stands on wooden stilts to the left.",
          ("A girl builds a sand castle on a sunny beach while surfers paddle out.",
           "A child with a red bucket plays in the sand near the waves.")),
    Scene("Inside a busy kitchen, a chef with a tall white hat is flipping vegetables in a large steel pan over a high "
          "flame. Copper pots hang from a rack above the stove, and a younger cook in a black shirt is chopping carrots "
          "on a wooden board next to him. Steam rises toward a row of bright lamps.",
          ("A chef tosses vegetables in a pan over a flame while another cook chops carrots.",
           "Two cooks work at the stove of a busy restaurant kitchen.")),
    Scene("A snowy mountain trail winds between tall pine trees. Two hikers in orange jackets and heavy backpacks are "
          "walking uphill with trekking poles, and a brown dog runs ahead of them through the fresh snow. In the distance "
          "a jagged peak is partly hidden by low clouds.",
          ("Two hikers and a dog climb a snowy trail through a pine forest.",
           "Hikers in orange jackets walk up a mountain path in the snow.")),
    Scene("The picture shows a quiet library reading room with long wooden tables. An elderly man with glasses is reading "
          "a thick newspaper under a green desk lamp. Across from him a student has fallen asleep on a pile of open "
          "textbooks. Tall shelves full of books line the walls up to the ceiling.",
          ("An old man reads a newspaper while a student sleeps on his books in a library.",
           "A student naps on textbooks in a library reading room.")),
    Scene("A red double-decker bus is stopped at a crowded crossing in the rain. Pedestrians with black umbrellas hurry "
          "across the zebra stripes in front of it, and a woman in a blue coat is holding the hand of a small boy in "
          "rubber boots. Shop windows glow with warm light along the wet pavement.",
          ("People with umbrellas cross a rainy street in front of a red double-decker bus.",
           "A woman and a boy cross the road by a red bus in the rain.")),
    Scene("On a green football pitch, a goalkeeper in a purple shirt dives to the right with both arms stretched out. "
          "The ball is flying just past his fingertips toward the top corner of the net. Behind the goal, fans in the "
          "stands are jumping up with their arms raised.",
          ("A goalkeeper dives but cannot stop the ball from going into the net.",
           "A football flies past a diving goalkeeper as the crowd cheers.")),
    Scene("A farmer in a straw hat is driving an old blue tractor across a golden wheat field at sunset. A flock of small "
          "birds rises from the crop behind the tractor, and a wooden barn with a rusty roof stands at the edge of the "
          "field near a single oak tree.",
          ("A farmer drives a blue tractor through a wheat field at sunset.",
           "An old tractor crosses a golden field near a wooden barn.")),
    Scene("In a bright classroom, a teacher is pointing at a large map of the world pinned to the wall. Children sit at "
          "small desks in rows, and one boy in the front row has raised his hand. A globe and a stack of colourful books "
          "rest on the teacher's desk near the window.",
          ("A teacher points at a world map while a boy raises his hand.",
           "Children in a classroom listen to a teacher in front of a map.")),
    Scene("Two elderly women are playing chess on a stone table in a city park. One of them is moving a white knight while "
          "the other rests her chin on her hand and frowns. Pigeons peck at crumbs on the path beside them, and autumn "
          "leaves cover the grass under a large maple tree.",
          ("Two old women play chess on a stone table in an autumn park.",
           "Two women concentrate on a game of chess in the park.")),
)
