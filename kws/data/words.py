"""Word lists the phrase lexicon is built from: commands, objects, names, everyday words."""

from __future__ import annotations

WAKE = [
    "hey computer", "okay computer", "hello robot", "hey robot", "okay house", "hey jarvis", "hi jarvis",
    "hey wakeline", "okay wakeline", "hello assistant", "hey assistant", "wake up", "listen up",
    "hey buddy", "okay google", "hey siri", "alexa", "computer", "hey nova", "hello nova", "hey marvin",
    "okay athena", "hey friday", "hello friday", "hey pixel", "hey sparky", "hey sunny", "hey zed",
]

VERBS_ON_OFF = ["turn on", "turn off", "switch on", "switch off", "power on", "power off", "shut off"]
DEVICES = [
    "the lights", "the light", "the fan", "the heater", "the radio", "the television", "the tv", "the oven",
    "the kettle", "the lamp", "the music", "the alarm", "the camera", "the printer", "the computer",
    "the air conditioner", "the dishwasher", "the washing machine", "the coffee maker", "the speaker",
    "the microphone", "the projector", "the sprinkler", "the porch light", "the night light",
]
ROOMS = ["kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "garden", "basement",
         "attic", "nursery", "dining room", "porch", "study", "cellar", "balcony"]
OPENABLE = ["the door", "the window", "the garage door", "the gate", "the blinds", "the curtains",
            "the front door", "the back door", "the fridge", "the drawer", "the trunk", "the valve"]
MEDIA_VERBS = ["play", "pause", "stop", "skip", "resume", "shuffle", "repeat", "record", "rewind"]
MEDIA = ["music", "the song", "the video", "the podcast", "the radio", "the news", "some jazz",
         "the playlist", "the movie", "the album", "the audiobook", "the weather", "the recording"]
SHORT_COMMANDS = [
    "stop", "go", "yes", "no", "cancel", "next", "previous", "back", "up", "down", "left", "right", "on",
    "off", "louder", "quieter", "volume up", "volume down", "mute", "unmute", "pause", "continue", "help",
    "repeat that", "never mind", "go back", "go forward", "go home", "start over", "try again", "confirm",
    "lock the door", "unlock the door", "lights on", "lights off", "music on", "music off", "good night",
    "good morning", "what time is it", "set a timer", "set an alarm", "call home", "call mom", "call dad",
    "read my messages", "send a message", "take a picture", "take a note", "what is the weather",
    "open sesame", "emergency stop", "all clear", "battery low", "power low", "system check",
    "research completed", "mission complete", "start recording", "stop recording", "show the map",
    "zoom in", "zoom out", "scroll up", "scroll down", "page up", "page down", "select all", "save file",
    "close window", "open settings", "dim the lights", "brighten the lights", "warmer", "cooler",
    "raise the temperature", "lower the temperature", "find my phone", "where are my keys",
]
NAMES = [
    "anna", "ben", "carla", "david", "emma", "frank", "grace", "henry", "isabel", "jack", "kate", "liam",
    "maria", "noah", "olivia", "peter", "quinn", "rachel", "sam", "tina", "victor", "wendy", "xavier",
    "yusuf", "zoe", "alice", "bob", "charlie", "diana", "ethan", "fiona", "george", "hannah", "ian",
    "julia", "kevin", "laura", "mike", "nina", "oscar", "paula", "robert", "sarah", "thomas", "ursula",
    "vincent", "william", "amelia", "lucas", "sofia", "mateo", "chloe", "leo", "mia", "arthur", "ella",
    "oliver", "lily", "james", "ava", "daniel", "ruby", "joseph", "nora", "adam", "lucy", "samuel", "ivy",
    "priya", "ravi", "mei", "chen", "kenji", "yuki", "omar", "fatima", "ahmed", "leila", "carlos", "lucia",
    "pierre", "camille", "hans", "greta", "sven", "ingrid", "dmitri", "olga", "kofi", "amara", "tariq",
]
NAME_VERBS = ["call", "text", "message", "email", "ring", "find", "invite", "remind"]
NUMBERED = ["light", "channel", "room", "zone", "camera", "speaker", "level", "track", "station", "fan"]

_EVERYDAY_TEXT = """
apple table chair window garden summer winter autumn spring morning evening night water coffee tea bread
butter cheese orange banana lemon sugar salt pepper kitchen paper pencil letter number picture story
family friend mother father sister brother teacher doctor student people child children house street city
country river mountain forest ocean island beach desert valley bridge tower castle market village school
office hospital library museum church station airport harbor garage basement ladder hammer bottle basket
bucket candle blanket pillow mirror carpet curtain jacket sweater shirt trousers shoes socks gloves scarf
hat umbrella wallet ticket money coin dollar minute second hour week month year today tomorrow yesterday
birthday holiday weekend dinner lunch breakfast supper sandwich salad soup pizza pasta rice potato tomato
carrot onion garlic chicken turkey salmon cookie cake honey juice milk yogurt cereal chocolate vanilla
strawberry cherry peach grape melon pumpkin walnut almond peanut pepperoni mushroom spinach cabbage
dog cat horse cow sheep goat rabbit mouse tiger lion bear wolf fox eagle owl parrot duck goose swan
dolphin whale shark turtle frog snake spider butterfly bee ant monkey elephant giraffe zebra camel
red blue green yellow purple pink brown black white gray silver golden bright dark light heavy quiet
loud soft hard warm cold hot cool fresh clean dirty empty full happy sad angry calm busy lazy quick slow
early late small large little big long short tall wide narrow deep shallow sharp smooth rough strong
weak young old new ancient modern simple gentle brave clever honest polite strange famous lucky
walk run jump swim climb dance sing read write draw paint cook bake clean wash fix build open close start
finish begin stop wait listen speak talk laugh smile think remember forget learn teach carry bring take
give send receive borrow lend travel visit return arrive leave follow lead push pull lift drop throw
catch kick hold touch feel smell taste watch look see hear find lose win choose decide answer ask
structure attack demolish research complete power report signal message network battery engine motor
rocket planet satellite galaxy orbit launch mission captain pilot driver sailor soldier farmer baker
painter singer dancer writer reader player keeper builder cleaner machine robot sensor button switch
screen keyboard monitor printer speaker camera phone tablet laptop charger cable socket bulb lamp fan
heater cooler freezer oven stove sink shower bathtub towel soap brush comb razor blade needle thread
ribbon button zipper pocket collar sleeve boot sandal slipper helmet glove mask badge medal trophy
puzzle riddle question problem solution answer reason result example moment memory dream idea plan
secret surprise promise danger safety freedom justice silence thunder lightning rainbow weather storm
breeze cloud shadow sunshine moonlight starlight sunrise sunset horizon meadow harvest blossom
"""
EVERYDAY = list(dict.fromkeys(_EVERYDAY_TEXT.split()))

SENTENCE_GLUE = ["the", "a", "and", "of", "to", "in", "is", "it", "that", "for", "with", "on", "at", "my",
                 "your", "we", "they", "was", "be", "this", "have", "from", "or", "by", "not", "but", "some",
                 "very", "just", "then", "there", "when", "so", "our", "more", "all", "will", "can", "about"]
