"""Word lists shared by the synthetic dataset and the pre-training corpus.

Plain data, no logic. Changing anything here changes the generated files, so bump
`pipelines.demo.assets.BUILDER_VERSION` with it.
"""

# Company names: "<first> <second> <suffix>", the suffix chosen to fit the jurisdiction.
COMPANY_FIRST = [
    "Northwind", "Blue Harbor", "Apex", "Cedar Ridge", "Quantum", "Silverline", "Redwood", "Ironbridge",
    "Brightwater", "Summit", "Granite", "Lakeshore", "Oakmont", "Crescent", "Evergreen", "Falcon",
    "Golden Gate", "Highland", "Juniper", "Keystone", "Lighthouse", "Meridian", "Nova", "Orion",
    "Pinecrest", "Riverstone", "Sterling", "Trident", "Upland", "Vantage", "Westbrook", "Zenith",
    "Amber", "Bluebird", "Copperfield", "Driftwood", "Eastgate", "Foxglove", "Greenfield", "Harborview",
    "Ivory", "Jade", "Kingsley", "Larkspur", "Maple", "Norcross", "Old Mill", "Polaris", "Quarry",
    "Rosewood", "Sable", "Tamarack", "Unity", "Valley", "Willow", "Yellowstone", "Aurora", "Beacon",
]
COMPANY_SECOND = [
    "Analytics", "Logistics", "Biotech", "Holdings", "Software", "Capital", "Foods", "Energy", "Systems",
    "Robotics", "Pharmaceuticals", "Media", "Networks", "Materials", "Partners", "Ventures", "Labs",
    "Manufacturing", "Retail", "Textiles", "Healthcare", "Semiconductors", "Shipping", "Solar",
    "Consulting", "Data", "Aerospace", "Instruments", "Bank", "Finance",
]

# (jurisdiction as written in the excerpt and in the JSON, kind, company suffixes)
# kind "state": a US state or Canadian province ("a Delaware corporation" reads naturally);
# kind "country": a country ("a company incorporated in Germany").
JURISDICTIONS = [
    ("Delaware", "state", ["Inc.", "Corp.", "LLC", "L.P."]),
    ("New York", "state", ["Inc.", "Corp.", "LLC"]),
    ("California", "state", ["Inc.", "Corp.", "LLC"]),
    ("Texas", "state", ["Inc.", "LLC", "L.P."]),
    ("Nevada", "state", ["Inc.", "LLC"]),
    ("Washington", "state", ["Inc.", "LLC"]),
    ("Massachusetts", "state", ["Inc.", "LLC"]),
    ("Illinois", "state", ["Inc.", "Corp."]),
    ("Ontario", "state", ["Inc.", "Ltd."]),
    ("British Columbia", "state", ["Inc.", "Ltd."]),
    ("England and Wales", "country", ["Ltd.", "Limited", "plc"]),
    ("Scotland", "country", ["Ltd.", "Limited"]),
    ("Ireland", "country", ["Limited", "DAC"]),
    ("Germany", "country", ["GmbH", "AG"]),
    ("France", "country", ["S.A.S.", "S.A."]),
    ("the Netherlands", "country", ["B.V.", "N.V."]),
    ("Singapore", "country", ["Pte. Ltd."]),
    ("Japan", "country", ["K.K."]),
    ("Switzerland", "country", ["AG", "SA"]),
    ("Luxembourg", "country", ["S.a r.l.", "S.A."]),
    ("Australia", "country", ["Pty Ltd"]),
    ("Sweden", "country", ["AB"]),
]

FIRST_NAMES = [
    "James", "Maria", "Robert", "Linda", "Michael", "Sarah", "David", "Emily", "Daniel", "Laura", "Thomas",
    "Anna", "Richard", "Sophie", "Charles", "Olivia", "Joseph", "Grace", "Henry", "Chloe", "Samuel",
    "Hannah", "Lucas", "Isabel", "Oliver", "Clara", "Benjamin", "Julia", "Nathan", "Elena", "Patrick",
    "Fiona", "Victor", "Naomi", "Arthur", "Rachel", "Felix", "Ingrid", "Hugo", "Priya", "Kenji", "Amara",
    "Mateo", "Yuki", "Omar", "Leila", "Ivan", "Nadia", "Pedro", "Ayesha",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson", "Anderson",
    "Taylor", "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White", "Harris", "Clark", "Lewis",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Hill", "Green", "Adams", "Baker", "Nelson",
    "Carter", "Mitchell", "Roberts", "Turner", "Phillips", "Campbell", "Parker", "Evans", "Edwards",
    "Collins", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Morgan", "Fischer", "Tanaka", "Okafor",
    "Novak", "Larsen", "Moreau", "Rossi", "Kowalski", "Haddad", "Nakamura", "Silva", "Petrov", "Schmidt",
]

# Where people reside: (place as written, place as extracted).
RESIDENCES = [
    "California", "New York", "Texas", "Florida", "Ontario", "Quebec", "Illinois", "Washington", "Oregon",
    "Colorado", "England", "Germany", "France", "Ireland", "Japan", "Singapore", "Spain", "Italy",
]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

# General knowledge used by the pre-training corpus and the general instruction set.
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("India", "New Delhi"), ("China", "Beijing"), ("Mexico", "Mexico City"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Turkey", "Ankara"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Russia", "Moscow"),
    ("Morocco", "Rabat"), ("Nigeria", "Abuja"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Cuba", "Havana"), ("Colombia", "Bogota"), ("South Korea", "Seoul"),
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen"]
TENS_WORDS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("old", "new"), ("strong", "weak"), ("high", "low"), ("open", "closed"),
    ("full", "empty"), ("hard", "soft"), ("rich", "poor"), ("wet", "dry"), ("long", "short"),
    ("clean", "dirty"), ("loud", "quiet"), ("thick", "thin"), ("near", "far"), ("heavy", "light"),
]
PLURALS = [
    ("cat", "cats"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("city", "cities"),
    ("knife", "knives"), ("tooth", "teeth"), ("bus", "buses"), ("story", "stories"), ("man", "men"),
    ("woman", "women"), ("leaf", "leaves"), ("foot", "feet"), ("baby", "babies"), ("dish", "dishes"),
    ("goose", "geese"), ("party", "parties"), ("book", "books"), ("church", "churches"), ("wolf", "wolves"),
]
# (subject, present, past, object) for "rewrite in the past tense".
VERB_SENTENCES = [
    ("The dog", "runs", "ran", "to the park"), ("My sister", "writes", "wrote", "a long letter"),
    ("The children", "play", "played", "in the garden"), ("Our team", "wins", "won", "the match"),
    ("The baker", "makes", "made", "fresh bread"), ("He", "drives", "drove", "to work"),
    ("She", "sings", "sang", "a song"), ("The students", "read", "read", "the book"),
    ("The bird", "flies", "flew", "over the river"), ("They", "build", "built", "a small house"),
    ("The farmer", "grows", "grew", "corn and wheat"), ("I", "eat", "ate", "an apple"),
    ("The teacher", "speaks", "spoke", "to the class"), ("We", "buy", "bought", "new shoes"),
    ("The river", "freezes", "froze", "in winter"), ("The cat", "sleeps", "slept", "on the sofa"),
    ("The company", "sells", "sold", "its old office"), ("My friend", "brings", "brought", "a cake"),
]
ANIMALS = ["cat", "dog", "fox", "horse", "rabbit", "owl", "bear", "deer", "duck", "goat", "sheep", "wolf"]
PLACES = ["market", "library", "station", "harbor", "school", "bakery", "park", "museum", "river", "farm"]
ITEMS = ["apples", "books", "candles", "eggs", "letters", "oranges", "pencils", "stamps", "tickets",
         "tomatoes", "cups", "coins"]
ADJECTIVES = ["quiet", "bright", "old", "small", "busy", "cold", "warm", "green", "tall", "gentle",
              "clever", "tired"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORDS_TO_UPPER = ["apple", "river", "garden", "contract", "window", "summer", "market", "pencil", "music",
                  "bridge", "letter", "planet", "forest", "silver", "orange", "engine"]

# A broader lexicon for descriptive sentences, so the pre-training text (and the BPE vocabulary)
# is not limited to the task's words.
NOUNS = [
    "house", "garden", "kitchen", "window", "mountain", "valley", "village", "island", "forest", "desert",
    "ocean", "lake", "bridge", "road", "tower", "castle", "factory", "office", "hospital", "airport",
    "train", "ship", "bicycle", "engine", "machine", "computer", "telephone", "camera", "clock", "lamp",
    "table", "chair", "blanket", "pillow", "mirror", "basket", "bottle", "bucket", "hammer", "ladder",
    "doctor", "nurse", "farmer", "painter", "sailor", "soldier", "student", "teacher", "writer", "singer",
    "mother", "father", "brother", "neighbor", "stranger", "visitor", "captain", "merchant", "musician",
    "journalist", "scientist", "engineer", "gardener", "carpenter", "librarian", "pilot", "chef", "judge",
    "letter", "newspaper", "journal", "picture", "painting", "song", "poem", "novel", "recipe", "map",
    "weather", "storm", "rain", "snow", "wind", "thunder", "sunlight", "shadow", "cloud", "rainbow",
    "breakfast", "dinner", "lunch", "bread", "cheese", "butter", "honey", "soup", "coffee", "tea",
    "question", "answer", "problem", "solution", "idea", "reason", "decision", "journey", "adventure",
    "festival", "holiday", "birthday", "wedding", "meeting", "lesson", "concert", "market", "harvest",
    "orchard", "meadow", "stream", "canyon", "glacier", "volcano", "harbor", "lighthouse", "cottage",
    "umbrella", "jacket", "sweater", "scarf", "boots", "gloves", "wallet", "ticket", "passport", "suitcase",
]
VERBS = [  # (present third person, past)
    ("walks", "walked"), ("opens", "opened"), ("closes", "closed"), ("carries", "carried"),
    ("paints", "painted"), ("repairs", "repaired"), ("cleans", "cleaned"), ("visits", "visited"),
    ("watches", "watched"), ("follows", "followed"), ("remembers", "remembered"), ("explains", "explained"),
    ("discovers", "discovered"), ("prepares", "prepared"), ("describes", "described"),
    ("collects", "collected"),
    ("finds", "found"), ("keeps", "kept"), ("leaves", "left"), ("sees", "saw"), ("takes", "took"),
    ("gives", "gave"), ("tells", "told"), ("hears", "heard"), ("holds", "held"), ("sends", "sent"),
    ("teaches", "taught"), ("catches", "caught"), ("chooses", "chose"), ("forgets", "forgot"),
    ("draws", "drew"), ("throws", "threw"), ("shows", "showed"), ("pushes", "pushed"), ("pulls", "pulled"),
    ("borrows", "borrowed"), ("returns", "returned"), ("answers", "answered"), ("counts", "counted"),
    ("measures", "measured"), ("orders", "ordered"), ("delivers", "delivered"), ("plants", "planted"),
]
ADJECTIVES_MORE = [
    "beautiful", "careful", "cheerful", "curious", "dangerous", "delicious", "enormous", "famous", "fragile",
    "friendly", "generous", "graceful", "honest", "hungry", "important", "narrow", "nervous", "patient",
    "peaceful", "polite", "precious", "proud", "rapid", "rare", "serious", "silent", "simple", "smooth",
    "strange", "sudden", "useful", "valuable", "wooden", "golden", "ancient", "modern", "heavy", "empty",
    "crowded", "distant", "frozen", "gentle", "humble", "lively", "lonely", "muddy", "sandy", "shiny",
    "sleepy", "sturdy", "tiny", "wide", "wild", "windy", "yellow", "purple", "orange", "brown", "silver",
]
ADVERBS = ["slowly", "quickly", "quietly", "carefully", "happily", "gently", "suddenly", "finally", "often",
           "rarely", "always", "usually", "proudly", "patiently", "eagerly", "calmly", "bravely", "politely"]
